//! Colours shared by the tabs: breakdown categories, the green-to-red heat scale, and the
//! colours of valid and invalid messages.

use egui::Color32;
use pangu_strategies::Category;

/// Messages about an invalid input or a failed job.
pub const ERROR: Color32 = Color32::from_rgb(229, 57, 53);

/// The message of a valid strategy.
pub const VALID: Color32 = Color32::from_rgb(67, 160, 71);

/// The colour of a breakdown category.
pub fn color(c: Category) -> Color32 {
    match c {
        Category::Compute => Color32::from_rgb(76, 175, 80),
        Category::Recompute => Color32::from_rgb(139, 195, 74),
        Category::TpComm => Color32::from_rgb(33, 150, 243),
        Category::CpComm => Color32::from_rgb(0, 188, 212),
        Category::DpComm => Color32::from_rgb(156, 39, 176),
        Category::PpComm => Color32::from_rgb(255, 152, 0),
        Category::OptComm => Color32::from_rgb(233, 30, 99),
        Category::Bubble => Color32::from_rgb(158, 158, 158),
        Category::Idle => Color32::from_rgb(96, 96, 96),
    }
}

/// Green (low) to red (high) for a fraction in [0, 1] (above 1: magenta, over capacity).
pub fn heat(v: f64) -> Color32 {
    if !v.is_finite() || v <= 0.0 {
        return Color32::from_gray(90);
    }
    if v > 1.0 {
        return Color32::from_rgb(216, 27, 96);
    }
    let t = v as f32;
    Color32::from_rgb((60.0 + 195.0 * t) as u8, (200.0 - 150.0 * t) as u8, 70)
}
