//! Reading a published run's cells: the row type and its text, number and whole-number
//! fields (a leading number, as in "8 (op-level MP with optimizer sharding; 16 without)").

use std::collections::HashMap;

/// One CSV row: column name to value.
pub type Row = HashMap<String, String>;

pub(super) fn field<'a>(r: &'a Row, k: &str) -> &'a str {
    r.get(k).map_or("", |s| s.trim())
}

pub(super) fn num(r: &Row, k: &str) -> Result<Option<f64>, String> {
    let s = field(r, k);
    if s.is_empty() {
        return Ok(None);
    }
    // Leading number of e.g. "8 (op-level MP with optimizer sharding; 16 without)".
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(s.len());
    let v: f64 = s[..end]
        .parse()
        .map_err(|_| format!("column {k}: {s:?} is not a number"))?;
    if !v.is_finite() {
        return Err(format!("column {k}: {s:?} is not finite"));
    }
    Ok(Some(v))
}

pub(super) fn int(r: &Row, k: &str) -> Result<Option<u32>, String> {
    match num(r, k)? {
        None => Ok(None),
        Some(v) if v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX) => Ok(Some(v as u32)),
        Some(v) => Err(format!("column {k}: {v} is not a whole number")),
    }
}
