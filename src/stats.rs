//! Small statistics shared by the experiment runner and the runtime.

/// The `q` quantile (nearest rank) of `sorted`; NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// The two-sided 95 % normal quantile.
const Z95: f64 = 1.959_963_984_540_054;

/// 95 % interval of a drop in accuracy, in points, measured on the same `n` inputs
/// before and after a change: `lost` inputs were right before and wrong after,
/// `gained` the reverse. Agresti and Min's interval for a difference of paired
/// proportions (Biometrics 61, 2005): the Wald interval after adding one half to each
/// cell of the 2x2 table, so that a table with no discordant input still has a width.
pub fn paired_drop_ci95(lost: usize, gained: usize, n: usize) -> [f64; 2] {
    let n2 = n as f64 + 2.0;
    let (b, c) = (lost as f64 + 0.5, gained as f64 + 0.5);
    let d = (b - c) / n2;
    let se = (((b + c) / n2 - d * d).max(0.0) / n2).sqrt();
    [100.0 * (d - Z95 * se), 100.0 * (d + Z95 * se)]
}

/// 95 % Wilson score interval of a proportion `k / n`, in points.
pub fn wilson_ci95(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 100.0];
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    [
        100.0 * (centre - half).max(0.0),
        100.0 * (centre + half).min(1.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_interval_has_width_without_discordant_inputs_and_grows_with_them() {
        let [lo, hi] = paired_drop_ci95(0, 0, 500);
        assert!(lo < 0.0 && hi > 0.0 && (hi + lo).abs() < 1e-12);
        assert!((hi - 0.39).abs() < 0.01, "{hi}");
        // 5 lost, 1 gained of 500: a drop of 0.8 points; the upper bound is past 1.
        let [lo, hi] = paired_drop_ci95(5, 1, 500);
        assert!(lo < 0.8 && hi > 1.5 && hi < 2.0, "{lo} {hi}");
        // A drop the interval excludes zero from.
        let [lo, _] = paired_drop_ci95(40, 0, 500);
        assert!(lo > 5.0, "{lo}");
    }

    #[test]
    fn wilson_interval_matches_a_published_value() {
        // Wilson (1927) as tabulated by Newcombe (1998), example (d): 1 of 29,
        // 0.0061 to 0.1718.
        let [lo, hi] = wilson_ci95(1, 29);
        assert!(
            (lo - 0.61).abs() < 0.01 && (hi - 17.18).abs() < 0.01,
            "{lo} {hi}"
        );
        assert_eq!(wilson_ci95(0, 10)[0], 0.0);
    }
}
