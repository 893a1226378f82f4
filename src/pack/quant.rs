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
