//! `pangu-ui`: an egui desktop app over the same crates as the `pangu` CLI.
//!
//! Its job (issue "desktop app"): panels for the cluster topology, the model, a strategy editor
//! with instant validation, results, a timeline of the simulated step, search, what-if sliders
//! and a live training monitor, with simulation and training off the UI thread. It holds no
//! logic of its own beyond presentation. Nothing is implemented yet.
