//! Small widgets more than one tab draws.

/// A combo box over `options`, each shown by its `Display`.
pub(crate) fn choose<T: PartialEq + std::fmt::Display>(
    ui: &mut egui::Ui,
    id: &str,
    value: &mut T,
    options: impl IntoIterator<Item = T>,
) {
    egui::ComboBox::from_id_salt(id)
        .selected_text(value.to_string())
        .show_ui(ui, |ui| {
            for o in options {
                let text = o.to_string();
                ui.selectable_value(value, o, text);
            }
        });
}
