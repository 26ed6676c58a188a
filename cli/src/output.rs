//! Conventions every command's output follows: a `tool` field naming the version and a hash
//! of the inputs; fractions not percentages; seconds and bytes as plain numbers.

use serde::Serialize;
use serde_json::{json, Value};

/// FNV-1a, 64-bit: stable across Rust versions and platforms (unlike `DefaultHasher`).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The `tool` field: name, version and the hash of the canonical JSON of the inputs.
pub(crate) fn tool_field(inputs: &impl Serialize) -> Value {
    let canonical = serde_json::to_vec(inputs).unwrap_or_default();
    json!({
        "name": "pangu",
        "version": env!("CARGO_PKG_VERSION"),
        "input_hash": format!("{:016x}", fnv1a(&canonical)),
    })
}

/// Appends a formatted line to a `String` buffer.
macro_rules! outln {
    ($o:expr) => { $o.push('\n') };
    ($o:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($arg)*);
    }};
}
pub(crate) use outln;

/// Writes to stdout; a closed pipe (`pangu simulate | head`) ends the program quietly.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(e.into()),
    }
}

/// Prints JSON, pretty.
pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    emit(&(serde_json::to_string_pretty(v)? + "\n"))
}

/// A plain-text table with left-aligned first column and right-aligned others.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let fmt_row = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = w[i].saturating_sub(c.chars().count());
                if i == 0 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = String::new();
    out.push_str(fmt_row(header.to_vec()).trim_end());
    out.push('\n');
    out.push_str(
        &w.iter()
            .map(|&k| "-".repeat(k))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for r in rows {
        out.push_str(fmt_row(r.iter().map(String::as_str).collect()).trim_end());
        out.push('\n');
    }
    out
}

/// How sure a prediction for `regime` is, against the shipped cross-validated rows
/// (`pangu_sim::validate::confidence`): the line to print and the JSON value.
pub(crate) fn confidence(
    regime: Result<pangu_sim::validate::confidence::Regime, pangu_sim::SimError>,
) -> (String, Value) {
    match regime.and_then(|r| pangu_sim::validate::confidence::confidence(&r)) {
        Ok(c) => (
            c.line.clone(),
            serde_json::to_value(&c).unwrap_or(Value::Null),
        ),
        Err(e) => (
            format!("confidence: unavailable ({e})"),
            json!({"error": e.to_string()}),
        ),
    }
}

/// [`confidence`] of a model, chip and resolved strategy (a search candidate).
pub(crate) fn confidence_for(
    model: &pangu_model::ModelConfig,
    chip: &pangu_hardware::ChipSpec,
    strategy: &pangu_strategies::Strategy,
) -> (String, Value) {
    confidence(pangu_sim::validate::confidence::Regime::new(
        model, chip, strategy,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn table_aligns() {
        let t = table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\n---  --\nxyz   1\n");
    }
}
