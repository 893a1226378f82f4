//! Input-specific quantisation: each tensor (or channel) is mapped onto `2^bits - 1`
//! uniform levels between its own minimum and maximum, unsigned and asymmetric.
//! Code 0 is the minimum, so when the minimum is 0 (after a ReLU) zeros stay exactly 0.
use super::shuffle::{gather, gather64, plane_len, scatter, scatter64};

/// The range of one quantisation group (a whole tensor, or one channel).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    /// The empty range, neutral for [`Range::merge`].
    pub const EMPTY: Range = Range {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
    };

    pub fn merge(self, other: Range) -> Range {
        Range {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    /// The width of one quantisation step at `bits` (0 for a constant group).
    pub fn step(self, bits: u32) -> f32 {
        (self.max - self.min) / levels(bits) as f32
    }
}

/// The largest code at `bits`.
pub fn levels(bits: u32) -> u32 {
    (1u32 << bits) - 1
}

/// The range of `values`, or the index of the first value that is NaN or infinite.
#[allow(clippy::eq_op)] // `v - v` is the vectorisable finiteness test, on purpose
pub fn range_of(values: &[f32]) -> Result<Range, usize> {
    // Eight independent lanes and plain comparisons, so the compiler vectorises the loop;
    // `v - v` is 0 for a finite value and NaN for NaN or an infinity.
    let mut mn = [f32::INFINITY; 8];
    let mut mx = [f32::NEG_INFINITY; 8];
    let mut bad = [false; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            let v = c[i];
            mn[i] = if v < mn[i] { v } else { mn[i] };
            mx[i] = if v > mx[i] { v } else { mx[i] };
            bad[i] |= (v - v) != 0.0;
        }
    }
    let mut bad = bad.iter().any(|b| *b);
    for &v in chunks.remainder() {
        mn[0] = mn[0].min(v);
        mx[0] = mx[0].max(v);
        bad |= !v.is_finite();
    }
    if bad {
        return Err(values
            .iter()
            .position(|v| !v.is_finite())
            .expect("a non-finite value"));
    }
    let min = mn.iter().copied().fold(f32::INFINITY, f32::min);
    let max = mx.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    Ok(Range { min, max })
}

/// Bins of the histogram [`clip_mse`] searches over.
const CLIP_BINS: usize = 1024;
/// Candidate clip factors: the range shrunk toward its anchor by `2^(-k/8)`, k = 0..=48
/// (the full range down to 1/64 of it).
const CLIP_CANDIDATES: i32 = 48;
/// The search stops this many candidates past the best so far (a factor of 2^(-1)).
const CLIP_PATIENCE: i32 = 8;

/// The range within `r` (the min and max of `groups`) that minimises the summed squared
/// round-trip error at `bits`, clipping the tails: values beyond the chosen range come
/// back as its ends. The range shrinks toward an anchor, 0 when `r` holds it (so a
/// ReLU's zeros stay exact) and otherwise the end nearer to 0. The error of each
/// candidate is computed from a histogram of `CLIP_BINS` bins that keeps each bin's
/// count, sum and sum of squares: exact for a bin whose values round to one level, and
/// `step^2 / 12` per value where a level's cell is narrower than two bins. The full range
/// is one of the candidates, and wins ties.
pub fn clip_mse<'a, I>(groups: I, r: Range, bits: u32) -> Range
where
    I: IntoIterator<Item = &'a [f32]>,
{
    if r.max <= r.min || !(r.max - r.min).is_finite() {
        return r;
    }
    let width = (f64::from(r.max) - f64::from(r.min)) / CLIP_BINS as f64;
    let per_bin = (CLIP_BINS as f64 / (f64::from(r.max) - f64::from(r.min))) as f32;
    let mut count = [0u32; CLIP_BINS];
    let mut sum = [0f64; CLIP_BINS];
    let mut sq = [0f64; CLIP_BINS];
    for g in groups {
        for &v in g {
            let b = (((v - r.min) * per_bin) as usize).min(CLIP_BINS - 1);
            let v = f64::from(v);
            count[b] += 1;
            sum[b] += v;
            sq[b] += v * v;
        }
    }
    // The occupied bins: (count, mean, sum, sum of squares).
    let bins: Vec<(f64, f64, f64, f64)> = (0..CLIP_BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let n = f64::from(count[b]);
            (n, sum[b] / n, sum[b], sq[b])
        })
        .collect();
    let anchor = f64::from(0f32.clamp(r.min, r.max));
    let (lo0, hi0) = (f64::from(r.min), f64::from(r.max));
    let top = f64::from(levels(bits));
    let error = |lo: f64, hi: f64| -> f64 {
        let step = (hi - lo) / top;
        let inv = 1.0 / step;
        let fine = step < 2.0 * width;
        let mut e = 0.0;
        for &(n, mean, s1, s2) in &bins {
            if fine && mean > lo && mean < hi {
                e += n * step * step / 12.0;
                continue;
            }
            let q = lo + ((mean.clamp(lo, hi) - lo) * inv).round() * step;
            // sum over the bin of (v - q)^2, never below 0 after cancellation
            e += (s2 - 2.0 * q * s1 + n * q * q).max(0.0);
        }
        e
    };
    let mut best = (error(lo0, hi0), r, 0);
    for k in 1..=CLIP_CANDIDATES {
        // The error falls and then rises as the range shrinks: stop well past the best.
        if k - best.2 > CLIP_PATIENCE {
            break;
        }
        let a = 2f64.powf(-f64::from(k) / 8.0);
        let (lo, hi) = (anchor + a * (lo0 - anchor), anchor + a * (hi0 - anchor));
        if hi <= lo {
            break;
        }
        let e = error(lo, hi);
        if e < best.0 {
            let clipped = Range {
                min: lo as f32,
                max: hi as f32,
            };
            best = (e, clipped, k);
        }
    }
    best.1
}

/// Quantises `values` (all within `r`) to codes of `bits` bits.
pub fn quantise(values: &[f32], r: Range, bits: u32, codes: &mut [u16]) {
    debug_assert_eq!(values.len(), codes.len());
    let top = levels(bits);
    if r.max <= r.min {
        codes.fill(0); // a constant group: every value is the minimum
        return;
    }
    let inv = top as f32 / (r.max - r.min);
    let top = top as f32;
    for (c, &v) in codes.iter_mut().zip(values) {
        // v - min >= 0, so adding 0.5 and truncating rounds to the nearest level.
        *c = ((v - r.min) * inv + 0.5).min(top) as u16;
    }
}

/// Maps codes back to values: `min + code * step`.
pub fn dequantise(codes: &[u16], r: Range, bits: u32, out: &mut [f32]) {
    debug_assert_eq!(codes.len(), out.len());
    let step = if r.max > r.min { r.step(bits) } else { 0.0 };
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = r.min + f32::from(c) * step;
    }
}

/// Quantises with one range and bit-shuffles in a single pass: [`quantise`] followed by
/// [`shuffle::shuffle`](super::shuffle::shuffle), without the intermediate codes. The hot
/// path of packing.
pub fn quantise_shuffle(values: &[f32], r: Range, bits: u32, out: &mut [u8]) {
    let plane = plane_len(values.len());
    assert_eq!(
        out.len(),
        bits as usize * plane,
        "output is bits * plane_len bytes"
    );
    let top = levels(bits) as f32;
    // A constant group has inv = 0: every code is round(0.5) = 0, the minimum.
    let inv = if r.max > r.min {
        top / (r.max - r.min)
    } else {
        0.0
    };
    let code = |v: f32| ((v - r.min) * inv + 0.5).min(top) as u16;
    let nb = bits as usize;
    // 64 codes at a time, then 8 at a time, then the last partial group.
    let mut big = values.chunks_exact(64);
    for (b, c) in (&mut big).enumerate() {
        let codes: [u16; 64] = std::array::from_fn(|i| code(c[i]));
        scatter64(&codes, 8 * b, nb, plane, out);
    }
    let done = values.len() / 64 * 8;
    let mut chunks = big.remainder().chunks_exact(8);
    for (g, c) in (&mut chunks).enumerate() {
        let codes: [u16; 8] = std::array::from_fn(|i| code(c[i]));
        scatter(codes, done + g, nb, plane, out);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let codes: [u16; 8] = std::array::from_fn(|i| rest.get(i).map_or(0, |&v| code(v)));
        scatter(codes, values.len() / 8, nb, plane, out);
    }
}

/// The inverse of [`quantise_shuffle`]: planes to values in one pass.
pub fn unshuffle_dequantise(planes: &[u8], r: Range, bits: u32, out: &mut [f32]) {
    let plane = plane_len(out.len());
    assert_eq!(
        planes.len(),
        bits as usize * plane,
        "input is bits * plane_len bytes"
    );
    let step = if r.max > r.min { r.step(bits) } else { 0.0 };
    let nb = bits as usize;
    let full_groups = out.len() / 8;
    let gather = |g: usize| gather(planes, g, nb, plane);
    let mut big = out.chunks_exact_mut(64);
    for (b, c) in (&mut big).enumerate() {
        let codes = gather64(planes, 8 * b, nb, plane);
        for i in 0..64 {
            c[i] = r.min + f32::from(codes[i]) * step;
        }
    }
    let done = full_groups / 8 * 8;
    let mut chunks = big.into_remainder().chunks_exact_mut(8);
    for (g, c) in (&mut chunks).enumerate() {
        let g = done + g;
        let codes = gather(g);
        for i in 0..8 {
            c[i] = r.min + f32::from(codes[i]) * step;
        }
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let codes = gather(full_groups);
        for (o, &c) in rest.iter_mut().zip(&codes) {
            *o = r.min + f32::from(c) * step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::shuffle::{shuffle, unshuffle};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_fused_path_equals_quantise_then_shuffle(
            bits in 1u32..=16,
            values in proptest::collection::vec(-50f32..50.0, 1..300),
        ) {
            let r = range_of(&values).unwrap();
            let mut codes = vec![0u16; values.len()];
            quantise(&values, r, bits, &mut codes);
            let mut planes = vec![0u8; bits as usize * plane_len(values.len())];
            shuffle(&codes, bits, &mut planes);
            let mut fused = vec![0u8; planes.len()];
            quantise_shuffle(&values, r, bits, &mut fused);
            prop_assert_eq!(&fused, &planes);
            let mut back = vec![0u16; values.len()];
            unshuffle(&planes, bits, &mut back);
            let mut slow = vec![0f32; values.len()];
            dequantise(&back, r, bits, &mut slow);
            let mut fast = vec![0f32; values.len()];
            unshuffle_dequantise(&planes, r, bits, &mut fast);
            prop_assert_eq!(fast, slow);
        }
    }

    proptest! {
        #[test]
        fn round_trip_error_is_at_most_half_a_step(
            bits in 1u32..=16,
            values in proptest::collection::vec(-1e4f32..1e4, 1..200),
        ) {
            let r = range_of(&values).unwrap();
            let mut codes = vec![0u16; values.len()];
            quantise(&values, r, bits, &mut codes);
            prop_assert!(codes.iter().all(|&c| u32::from(c) <= levels(bits)));
            let mut back = vec![0f32; values.len()];
            dequantise(&codes, r, bits, &mut back);
            // Half a step, plus float rounding of values of this magnitude.
            let magnitude = r.min.abs().max(r.max.abs());
            let tol = r.step(bits) / 2.0 + 8.0 * f32::EPSILON * magnitude;
            for (v, b) in values.iter().zip(&back) {
                prop_assert!((v - b).abs() <= tol, "{} -> {} (tol {})", v, b, tol);
            }
        }

        #[test]
        fn zeros_survive_exactly_after_relu(
            bits in 1u32..=16,
            values in proptest::collection::vec(prop_oneof![Just(0f32), 0f32..100.0], 1..200),
        ) {
            let mut values = values;
            values[0] = 0.0; // a ReLU output: the minimum is 0
            let r = range_of(&values).unwrap();
            let mut codes = vec![0u16; values.len()];
            quantise(&values, r, bits, &mut codes);
            let mut back = vec![0f32; values.len()];
            dequantise(&codes, r, bits, &mut back);
            for (v, b) in values.iter().zip(&back) {
                if *v == 0.0 {
                    prop_assert_eq!(*b, 0.0);
                }
            }
        }
    }

    /// Summed squared round-trip error of `values` quantised in `r`.
    fn squared_error(values: &[f32], r: Range, bits: u32) -> f64 {
        let mut codes = vec![0u16; values.len()];
        quantise(values, r, bits, &mut codes);
        let mut back = vec![0f32; values.len()];
        dequantise(&codes, r, bits, &mut back);
        values
            .iter()
            .zip(&back)
            .map(|(v, b)| (f64::from(*v) - f64::from(*b)).powi(2))
            .sum()
    }

    /// Mostly small values and a few large ones, as activations are; a ReLU's zeros
    /// when `relu`.
    fn heavy_tailed() -> impl Strategy<Value = Vec<f32>> {
        proptest::collection::vec(
            prop_oneof![8 => -2f32..2.0, 1 => -60f32..60.0, 1 => Just(0f32)],
            2..400,
        )
    }

    proptest! {
        #[test]
        fn a_clipped_range_never_costs_more_error_than_min_max(
            bits in 1u32..=10,
            values in heavy_tailed(),
            relu in any::<bool>(),
        ) {
            let values: Vec<f32> =
                if relu { values.iter().map(|v| v.max(0.0)).collect() } else { values };
            let r = range_of(&values).unwrap();
            let c = clip_mse([&values[..]], r, bits);
            prop_assert!(r.min <= c.min && c.min <= c.max && c.max <= r.max, "{:?} in {:?}", c, r);
            // (Only where the ReLU left a zero: all-positive inputs have none.)
            if relu && r.min == 0.0 {
                prop_assert_eq!(c.min, 0.0, "a ReLU's zeros stay a level");
            }
            let (clipped, full) = (squared_error(&values, c, bits), squared_error(&values, r, bits));
            // The search works on a histogram, so it may misjudge by a fraction of a bin.
            let bin = f64::from(r.max - r.min) / CLIP_BINS as f64;
            let slack = values.len() as f64 * bin * f64::from(r.max - r.min) / 100.0;
            prop_assert!(clipped <= full * 1.02 + slack, "clipped {} > min/max {}", clipped, full);
        }
    }

    #[test]
    fn a_long_tail_is_clipped_at_low_bits() {
        // An exponential distribution (a ReLU-like long tail), 10,000 values by inverse
        // CDF: the maximum is 9.2, but 95 % of the values are below 3.
        let values: Vec<f32> = (0..10_000)
            .map(|i| -((i as f32 + 0.5) / 10_000.0).ln())
            .collect();
        let r = range_of(&values).unwrap();
        let c = clip_mse([&values[..]], r, 2);
        assert_eq!(c.min, r.min);
        assert!(c.max < 0.5 * r.max, "clipped to {c:?} of {r:?}");
        let (clipped, full) = (squared_error(&values, c, 2), squared_error(&values, r, 2));
        assert!(
            clipped * 2.0 < full,
            "clipped {clipped} against min/max {full}"
        );
        // At 16 bits the tail would cost more than the finer steps save: nothing is clipped.
        assert_eq!(clip_mse([&values[..]], r, 16), r);
    }

    #[test]
    fn clipping_a_constant_or_empty_group_keeps_its_range() {
        let r = Range { min: 2.5, max: 2.5 };
        assert_eq!(clip_mse([&[2.5f32; 9][..]], r, 3), r);
        assert_eq!(clip_mse(std::iter::empty::<&[f32]>(), r, 3), r);
    }

    #[test]
    fn a_constant_tensor_comes_back_unchanged() {
        let values = [3.25f32; 17];
        let r = range_of(&values).unwrap();
        let mut codes = vec![7u16; 17];
        quantise(&values, r, 4, &mut codes);
        assert!(codes.iter().all(|&c| c == 0));
        let mut back = [0f32; 17];
        dequantise(&codes, r, 4, &mut back);
        assert_eq!(back, values);
    }

    #[test]
    fn non_finite_values_are_found_by_index() {
        let mut v = vec![1.0f32; 20];
        v[13] = f32::NAN;
        assert_eq!(range_of(&v), Err(13));
        v[13] = 1.0;
        v[19] = f32::NEG_INFINITY;
        assert_eq!(range_of(&v), Err(19));
    }
}
