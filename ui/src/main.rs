//! `pangu-ui`: the desktop app. `--tab NAME` opens a tab (cluster, model, strategy, results,
//! timeline, search, what-if, training); `--simulate` simulates the reference strategy at
//! start.

fn main() -> eframe::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut app = pangu_ui::App::default();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--simulate" => app.handle(pangu_ui::Command::Simulate),
            "--tab" if i + 1 < args.len() => {
                i += 1;
                match pangu_ui::Tab::from_name(&args[i]) {
                    Some(t) => app.tab = t,
                    None => {
                        eprintln!("error: --tab {}: use cluster, model, strategy, results, timeline, search, what-if or training", args[i]);
                        std::process::exit(2);
                    }
                }
            }
            other => {
                eprintln!("error: unknown argument {other:?} (pangu-ui [--tab NAME] [--simulate])");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1400.0, 900.0])
            .with_title("PanGu twin"),
        ..Default::default()
    };
    eframe::run_native("PanGu twin", options, Box::new(|_cc| Ok(Box::new(app))))
}
