//! `pangu sweep`: what-if grids over any key of the strategy, model and cluster files.
//!
//! `--vary strategy.tp=4,8,16 --vary cluster.network.nic.bandwidth="100 Gbit/s,200 Gbit/s"`:
//! every combination is applied to the TOML of the inputs (so any key a file can hold can be
//! varied, nested keys with dots), re-read with the same validation as a file, planned and
//! simulated. One CSV row per point; a point that is invalid or does not fit keeps its row
//! with the reason. `--json` gives the same points as JSON.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use pangu_hardware::{Cluster, ClusterSpec};
use pangu_model::ModelConfig;
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};

use crate::args::SetupArgs;
use serde_json::json;

use crate::output::{emit, outln, tool_field};

/// Options of `pangu sweep`.
#[derive(Debug, Args)]
pub(crate) struct SweepArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    /// `SECTION.KEY=V1,V2,...` with SECTION one of strategy, model, cluster; repeatable.
    #[arg(long = "vary", required = true, value_name = "SECTION.KEY=VALUES")]
    pub vary: Vec<String>,
    /// Write the CSV here instead of standard output.
    #[arg(long, value_name = "FILE.csv")]
    pub out: Option<String>,
    /// Also plot tokens/s against the first varied key, one line per combination of the
    /// others (PNG or SVG by the file's extension).
    #[arg(long, value_name = "FILE.png|FILE.svg")]
    pub plot: Option<String>,
    /// Print (or write to --out) JSON instead of CSV: the varied keys and one object per
    /// point, with the `tool` field.
    #[arg(long)]
    pub json: bool,
}

struct Axis {
    section: String,
    path: Vec<String>,
    values: Vec<String>,
}

fn parse_axis(s: &str) -> Result<Axis> {
    let (key, values) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--vary {s:?}: write SECTION.KEY=V1,V2,..."))?;
    let mut parts = key.split('.').map(str::to_string);
    let section = parts.next().unwrap_or_default();
    if !["strategy", "model", "cluster"].contains(&section.as_str()) {
        bail!("--vary {s:?}: the key must start with strategy., model. or cluster.");
    }
    let path: Vec<String> = parts.collect();
    if path.is_empty() {
        bail!("--vary {s:?}: name a key after {section}., e.g. {section}.tp");
    }
    let values: Vec<String> = values
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        bail!("--vary {s:?}: give at least one value");
    }
    Ok(Axis {
        section,
        path,
        values,
    })
}

/// A TOML value from command-line text: integer, float, boolean, else string.
fn value(text: &str) -> toml::Value {
    if let Ok(i) = text.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(f) = text.parse::<f64>() {
        toml::Value::Float(f)
    } else if let Ok(b) = text.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(text.trim_matches('"').to_string())
    }
}

fn set(root: &mut toml::Value, path: &[String], v: toml::Value) -> Result<()> {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| anyhow!("{} is not a table", path[..i].join(".")))?;
        if i + 1 == path.len() {
            table.insert(k.clone(), v);
            return Ok(());
        }
        cur = table
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    Ok(())
}

/// Runs `pangu sweep`.
pub(crate) fn run(args: &SweepArgs) -> Result<()> {
    let axes: Vec<Axis> = args
        .vary
        .iter()
        .map(|s| parse_axis(s))
        .collect::<Result<_>>()?;
    let crate::args::Inputs { model, spec, notes } = args.setup.inputs()?;
    for n in notes {
        eprintln!("note: {n}");
    }
    let reference = pangu_strategies::reference(&model.name);
    let cluster = args
        .setup
        .cluster_or_reference(&model, reference.as_ref())?;
    let base_spec = reference
        .map(|r| r.strategy)
        .unwrap_or_default()
        .overlay(&spec);
    let base_model = toml::Value::try_from(&model).context("model to TOML")?;
    let base_cluster = toml::Value::try_from(&cluster.spec).context("cluster to TOML")?;
    let base_strategy = toml::Value::try_from(&base_spec).context("strategy to TOML")?;
    let total: usize = axes.iter().map(|a| a.values.len()).product();
    let bar = indicatif::ProgressBar::new(total as u64);
    let mut csv = String::new();
    let header: Vec<String> = axes
        .iter()
        .map(|a| format!("{}.{}", a.section, a.path.join(".")))
        .collect();
    outln!(
        csv,
        "{},step_time_s,tokens_per_s,mfu,max_memory_bytes,fits,error",
        header.join(",")
    );
    let mut points: Vec<(Vec<String>, Option<f64>)> = Vec::with_capacity(total);
    let mut json_points = Vec::with_capacity(total);
    for i in 0..total {
        let mut idx = i;
        let mut m = base_model.clone();
        let mut c = base_cluster.clone();
        let mut s = base_strategy.clone();
        let mut point = Vec::new();
        for a in &axes {
            let v = &a.values[idx % a.values.len()];
            idx /= a.values.len();
            let target = match a.section.as_str() {
                "model" => &mut m,
                "cluster" => &mut c,
                _ => &mut s,
            };
            set(target, &a.path, value(v))?;
            point.push(v.replace(',', ";"));
        }
        let row = evaluate(&m, &c, &s);
        json_points.push(point_json(&header, &point, &row));
        points.push((
            point.clone(),
            row.as_ref().ok().filter(|r| r.4).map(|r| r.1),
        ));
        let cells = match row {
            Ok((t, tok, mfu, mem, true)) => format!("{t},{tok},{mfu},{mem},true,"),
            Ok((_, _, _, mem, false)) => format!(",,,{mem},false,does not fit in memory"),
            Err(e) => format!(",,,,,\"{}\"", e.to_string().replace('"', "'")),
        };
        outln!(csv, "{},{cells}", point.join(","));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(path) = &args.plot {
        plot(path, &axes, &points, &header)?;
        eprintln!("plot written to {path}");
    }
    let text = if args.json {
        serde_json::to_string_pretty(&json!({
            "tool": tool_field(&(&base_model, &base_cluster, &base_strategy, &args.vary)),
            "vary": header,
            "points": json_points,
        }))? + "\n"
    } else {
        csv
    };
    match &args.out {
        Some(path) => {
            let tmp = format!("{path}.tmp");
            std::fs::write(&tmp, &text).with_context(|| format!("cannot write {tmp}"))?;
            std::fs::rename(&tmp, path).with_context(|| format!("cannot move {tmp} to {path}"))?;
            eprintln!("{total} points written to {path}");
            Ok(())
        }
        None => emit(&text),
    }
}

/// One point as JSON: its values by key, and the results or why there are none.
fn point_json(
    header: &[String],
    point: &[String],
    row: &Result<(f64, f64, f64, u64, bool)>,
) -> serde_json::Value {
    let values: serde_json::Map<String, serde_json::Value> = header
        .iter()
        .zip(point)
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    match row {
        Ok((t, tok, mfu, mem, true)) => json!({
            "values": values, "fits": true, "step_time_s": t, "tokens_per_s": tok, "mfu": mfu,
            "max_memory_bytes": mem,
        }),
        Ok((_, _, _, mem, false)) => json!({
            "values": values, "fits": false, "max_memory_bytes": mem,
            "error": "does not fit in memory",
        }),
        Err(e) => json!({ "values": values, "error": format!("{e:#}") }),
    }
}

/// Plans and simulates one point: (step s, tokens/s, MFU, memory bytes, fits).
fn evaluate(
    m: &toml::Value,
    c: &toml::Value,
    s: &toml::Value,
) -> Result<(f64, f64, f64, u64, bool)> {
    let model = ModelConfig::from_toml(&toml::to_string(m)?, "model")?;
    let spec = ClusterSpec::from_toml(&toml::to_string(c)?, "cluster")?;
    let cluster = Cluster::new(spec)?;
    let strategy = StrategySpec::from_toml(&toml::to_string(s)?, "strategy")?;
    let r = resolve_inputs(&model, Some(cluster), &strategy)?;
    let plan = Plan::build(&r.model, &r.cluster, &r.strategy)?;
    let mem = plan.max_memory().total.0;
    if !plan.fits() {
        return Ok((0.0, 0.0, 0.0, mem, false));
    }
    let rep = pangu_sim::simulate(&plan)?.report;
    Ok((rep.step_time_s, rep.tokens_per_s, rep.mfu, mem, true))
}

/// Registers the bundled font as "sans-serif": plotters draws text with it, so no system font
/// is needed.
pub(crate) fn register_font() -> Result<()> {
    static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("cannot load the bundled font"))
}

/// Tokens/s against the first axis, a line per combination of the other axes.
fn plot(
    path: &str,
    axes: &[Axis],
    points: &[(Vec<String>, Option<f64>)],
    header: &[String],
) -> Result<()> {
    use plotters::prelude::*;
    register_font()?;
    let n = axes[0].values.len();
    let ymax = points
        .iter()
        .filter_map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let mut series: std::collections::BTreeMap<String, Vec<(usize, f64)>> =
        std::collections::BTreeMap::new();
    for (vals, y) in points {
        let key = vals[1..]
            .iter()
            .zip(&header[1..])
            .map(|(v, h)| format!("{h}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let x = axes[0]
            .values
            .iter()
            .position(|v| v.replace(',', ";") == vals[0])
            .unwrap_or(0);
        if let Some(y) = y {
            series.entry(key).or_default().push((x, *y));
        }
    }
    let labels = axes[0].values.clone();
    if path.ends_with(".svg") {
        draw(
            SVGBackend::new(path, (900, 560)).into_drawing_area(),
            n,
            ymax,
            &labels,
            &header[0],
            &series,
        )
    } else if path.ends_with(".png") {
        draw(
            BitMapBackend::new(path, (900, 560)).into_drawing_area(),
            n,
            ymax,
            &labels,
            &header[0],
            &series,
        )
    } else {
        bail!("--plot {path}: use a .png or .svg file name")
    }
}

fn draw<DB: plotters::prelude::DrawingBackend>(
    root: plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    n: usize,
    ymax: f64,
    labels: &[String],
    x_desc: &str,
    series: &std::collections::BTreeMap<String, Vec<(usize, f64)>>,
) -> Result<()> {
    use plotters::prelude::*;
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("pangu sweep: tokens/s", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0usize..n.max(2) - 1, 0.0..ymax)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("tokens/s")
        .x_labels(n)
        .x_label_formatter(&|i| labels.get(*i).cloned().unwrap_or_default())
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for (k, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(if name.is_empty() {
                "tokens/s".to_string()
            } else {
                name.clone()
            })
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// The x-y chart area of a PNG plot.
pub(crate) type PngChart<'a> = plotters::chart::ChartContext<
    'a,
    plotters::prelude::BitMapBackend<'a>,
    plotters::prelude::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// Writes a PNG of `size` pixels with a caption, axes over `x` and `y` titled `titles`, and
/// whatever `draw` puts in the chart (the bundled font registered first).
pub(crate) fn png_chart(
    path: &std::path::Path,
    size: (u32, u32),
    caption: &str,
    (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
    titles: (&str, &str),
    draw: impl FnOnce(&mut PngChart<'_>) -> Result<()>,
) -> Result<()> {
    use plotters::prelude::*;
    register_font()?;
    let err = |e| anyhow!("{e:?}");
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(titles.0)
        .y_desc(titles.1)
        .draw()
        .map_err(err)?;
    draw(&mut chart)?;
    root.present().map_err(err)?;
    Ok(())
}
