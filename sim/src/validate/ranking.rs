//! Ranking, the product: within a group of rows (one model on one cluster, several strategies),
//! does the simulator order the strategies as they measured, and what would trusting its pick
//! have cost? Spearman's rank correlation between predicted and published speed (average ranks
//! for ties), and the regret of the predicted-best strategy: its measured time over the
//! measured best's, minus one.

use serde::Serialize;

use super::{Metric, RowResult};

/// One group's ranking.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRanking {
    /// The group.
    pub group: String,
    /// Its compared rows.
    pub rows: Vec<String>,
    /// Spearman's rank correlation of predicted and published speed (`None` when one side
    /// has no spread).
    pub spearman: Option<f64>,
    /// Measured time of the predicted-best row over the measured best's, minus one.
    pub regret: f64,
    /// The row predicted fastest.
    pub pick: String,
    /// The row measured fastest.
    pub best: String,
}

/// Speed in a row's metric: higher is better.
fn speed(m: Metric, v: f64) -> f64 {
    match m {
        Metric::StepTime => 1.0 / v,
        _ => v,
    }
}

/// Average ranks (1-based), ties sharing the mean of their positions.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            out[k] = r;
        }
        i = j + 1;
    }
    out
}

/// Pearson correlation of the ranks (`None` without spread).
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// The groups with at least `min_rows` compared rows of one metric, in first-row order.
pub fn rank_groups(results: &[RowResult], min_rows: usize) -> Vec<GroupRanking> {
    let mut keys: Vec<(String, Metric)> = Vec::new();
    for r in results {
        if let (Some(m), Some(_)) = (r.metric, r.error) {
            if !keys.contains(&(r.group.clone(), m)) {
                keys.push((r.group.clone(), m));
            }
        }
    }
    keys.into_iter()
        .filter_map(|(g, m)| {
            let rows: Vec<&RowResult> = results
                .iter()
                .filter(|r| r.group == g && r.metric == Some(m) && r.error.is_some())
                .collect();
            if rows.len() < min_rows.max(2) {
                return None;
            }
            let pred: Vec<f64> = rows
                .iter()
                .map(|r| speed(m, r.predicted.unwrap_or(f64::NAN)))
                .collect();
            let publ: Vec<f64> = rows
                .iter()
                .map(|r| speed(m, r.published.unwrap_or(f64::NAN)))
                .collect();
            let argmax = |v: &[f64]| {
                (0..v.len())
                    .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                    .unwrap_or(0)
            };
            let (pick, best) = (argmax(&pred), argmax(&publ));
            Some(GroupRanking {
                group: g,
                rows: rows.iter().map(|r| r.row_id.clone()).collect(),
                spearman: spearman(&pred, &publ),
                regret: publ[best] / publ[pick] - 1.0,
                pick: rows[pick].row_id.clone(),
                best: rows[best].row_id.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_and_ranks() {
        assert_eq!(ranks(&[3.0, 1.0, 2.0, 2.0]), vec![4.0, 1.0, 2.5, 2.5]);
        let s = spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]).unwrap();
        assert!((s - 1.0).abs() < 1e-12);
        let s = spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap();
        assert!((s + 1.0).abs() < 1e-12);
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_none());
    }
}
