//! Ad-hoc: simulate a plan and print the headline numbers.
use pangu_model::ModelConfig;
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).map_or("pangu-alpha-2.6b", String::as_str);
    let cluster = args
        .get(2)
        .map(|c| pangu_hardware::Cluster::from_name(c).unwrap());
    let m = ModelConfig::preset(model).unwrap();
    let r = resolve_inputs(&m, cluster, &StrategySpec::default()).unwrap();
    let plan = Plan::new(&m, &r.cluster, &r.strategy).unwrap();
    let t = std::time::Instant::now();
    let run = pangu_sim::simulate(&plan).unwrap();
    let wall = t.elapsed().as_secs_f64();
    let rep = &run.report;
    println!(
        "{} {}: step {:.3} s, tokens/s {:.0}, mfu {:.3}, hfu {:.3}, events {}, wall {:.2} s",
        model,
        plan.strategy.summary(),
        rep.step_time_s,
        rep.tokens_per_s,
        rep.mfu,
        rep.hfu,
        run.events,
        wall
    );
    println!("{:?}", rep.breakdown);
    println!("critical path segments {}", rep.critical_path.len());
    for l in &rep.links {
        println!("{:?}", l);
    }
}
