//! Small statistics shared by the experiment runner and the runtime.

/// The `q` quantile (nearest rank) of `sorted`; NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}
