//! Bit shuffling: `b`-bit codes transposed into `b` bit-planes.
//!
//! Plane `k` holds bit `k` of every code, 8 codes to a byte (code `8g + i` is bit `i` of
//! byte `g`). After a ReLU most codes are small, so the high planes are mostly zero
//! and runs of zero codes become runs of zero bytes: what LZ4 and zstd compress well.
//! The inner step is an 8x8 bit-matrix transpose in a `u64` (Hacker's Delight 7-3).

/// Bytes in one plane of `n` codes.
pub fn plane_len(n: usize) -> usize {
    n.div_ceil(8)
}

/// Transposes an 8x8 bit matrix: bit `j` of byte `i` becomes bit `i` of byte `j`.
#[inline(always)]
pub fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^= t ^ (t << 28);
    x
}

/// Writes the `bits` low bit-planes of `codes` into `out` (`bits * plane_len(n)` bytes).
/// Bits of a code above `bits` are ignored.
pub fn shuffle(codes: &[u16], bits: u32, out: &mut [u8]) {
    debug_assert!((1..=16).contains(&bits));
    let plane = plane_len(codes.len());
    assert_eq!(
        out.len(),
        bits as usize * plane,
        "output is bits * plane_len bytes"
    );
    let mut chunks = codes.chunks_exact(8);
    for (g, c) in (&mut chunks).enumerate() {
        scatter(
            c.try_into().expect("chunks of 8"),
            g,
            bits as usize,
            plane,
            out,
        );
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u16; 8];
        last[..rest.len()].copy_from_slice(rest);
        scatter(last, codes.len() / 8, bits as usize, plane, out);
    }
}

/// The inverse of [`shuffle`]: reads `bits` planes of `codes.len()` codes from `planes`.
pub fn unshuffle(planes: &[u8], bits: u32, codes: &mut [u16]) {
    debug_assert!((1..=16).contains(&bits));
    let plane = plane_len(codes.len());
    assert_eq!(
        planes.len(),
        bits as usize * plane,
        "input is bits * plane_len bytes"
    );
    let full_groups = codes.len() / 8;
    let mut chunks = codes.chunks_exact_mut(8);
    for (g, c) in (&mut chunks).enumerate() {
        c.copy_from_slice(&gather(planes, g, bits as usize, plane));
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let n = rest.len();
        rest.copy_from_slice(&gather(planes, full_groups, bits as usize, plane)[..n]);
    }
}

/// Writes group `g` (codes `8g..8g+8`) into the `bits` planes of `plane` bytes each.
#[inline(always)]
pub(crate) fn scatter(codes: [u16; 8], g: usize, bits: usize, plane: usize, out: &mut [u8]) {
    let low = transpose8(u64::from_le_bytes(codes.map(|c| c as u8))).to_le_bytes();
    for (k, b) in low.iter().enumerate().take(bits.min(8)) {
        out[k * plane + g] = *b;
    }
    if bits > 8 {
        let high = transpose8(u64::from_le_bytes(codes.map(|c| (c >> 8) as u8))).to_le_bytes();
        for (k, b) in high.iter().enumerate().take(bits - 8) {
            out[(8 + k) * plane + g] = *b;
        }
    }
}

/// Writes eight groups at once (codes `8g0..8g0+64`, `g0` a multiple of 8): each plane
/// gets 8 contiguous bytes, one store instead of eight.
#[inline(always)]
pub(crate) fn scatter64(codes: &[u16; 64], g0: usize, bits: usize, plane: usize, out: &mut [u8]) {
    let mut lo = [[0u8; 8]; 8];
    let mut hi = [[0u8; 8]; 8];
    for j in 0..8 {
        let c: [u16; 8] = std::array::from_fn(|i| codes[8 * j + i]);
        let t = transpose8(u64::from_le_bytes(c.map(|x| x as u8))).to_le_bytes();
        for k in 0..8 {
            lo[k][j] = t[k];
        }
        if bits > 8 {
            let t = transpose8(u64::from_le_bytes(c.map(|x| (x >> 8) as u8))).to_le_bytes();
            for k in 0..8 {
                hi[k][j] = t[k];
            }
        }
    }
    for (k, bytes) in lo.iter().enumerate().take(bits.min(8)) {
        out[k * plane + g0..k * plane + g0 + 8].copy_from_slice(bytes);
    }
    for (k, bytes) in hi.iter().enumerate().take(bits.saturating_sub(8)) {
        out[(8 + k) * plane + g0..(8 + k) * plane + g0 + 8].copy_from_slice(bytes);
    }
}

/// Reads eight groups at once: the inverse of [`scatter64`].
#[inline(always)]
pub(crate) fn gather64(planes: &[u8], g0: usize, bits: usize, plane: usize) -> [u16; 64] {
    let mut lo = [[0u8; 8]; 8];
    let mut hi = [[0u8; 8]; 8];
    for (k, bytes) in lo.iter_mut().enumerate().take(bits.min(8)) {
        bytes.copy_from_slice(&planes[k * plane + g0..k * plane + g0 + 8]);
    }
    for (k, bytes) in hi.iter_mut().enumerate().take(bits.saturating_sub(8)) {
        bytes.copy_from_slice(&planes[(8 + k) * plane + g0..(8 + k) * plane + g0 + 8]);
    }
    let mut codes = [0u16; 64];
    for j in 0..8 {
        let low = transpose8(u64::from_le_bytes(std::array::from_fn(|k| lo[k][j]))).to_le_bytes();
        let high = if bits > 8 {
            transpose8(u64::from_le_bytes(std::array::from_fn(|k| hi[k][j]))).to_le_bytes()
        } else {
            [0; 8]
        };
        for i in 0..8 {
            codes[8 * j + i] = u16::from(low[i]) | (u16::from(high[i]) << 8);
        }
    }
    codes
}

/// Reads group `g` (codes `8g..8g+8`) back from the planes: the inverse of [`scatter`].
#[inline(always)]
pub(crate) fn gather(planes: &[u8], g: usize, bits: usize, plane: usize) -> [u16; 8] {
    let mut low = [0u8; 8];
    for (k, b) in low.iter_mut().enumerate().take(bits.min(8)) {
        *b = planes[k * plane + g];
    }
    let low = transpose8(u64::from_le_bytes(low)).to_le_bytes();
    if bits <= 8 {
        return low.map(u16::from);
    }
    let mut high = [0u8; 8];
    for (k, b) in high.iter_mut().enumerate().take(bits - 8) {
        *b = planes[(8 + k) * plane + g];
    }
    let high = transpose8(u64::from_le_bytes(high)).to_le_bytes();
    std::array::from_fn(|i| u16::from(low[i]) | (u16::from(high[i]) << 8))
}

/// Byte shuffling of fp32 values: byte `k` of every value into plane `k` (4 planes).
pub fn byte_shuffle_f32(values: &[f32], out: &mut [u8]) {
    let n = values.len();
    assert_eq!(out.len(), 4 * n);
    for (i, v) in values.iter().enumerate() {
        let b = v.to_le_bytes();
        for k in 0..4 {
            out[k * n + i] = b[k];
        }
    }
}

/// The inverse of [`byte_shuffle_f32`].
pub fn byte_unshuffle_f32(planes: &[u8], values: &mut [f32]) {
    let n = values.len();
    assert_eq!(planes.len(), 4 * n);
    for (i, v) in values.iter_mut().enumerate() {
        *v = f32::from_le_bytes([
            planes[i],
            planes[n + i],
            planes[2 * n + i],
            planes[3 * n + i],
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, one bit at a time.
    fn naive(codes: &[u16], bits: u32) -> Vec<u8> {
        let plane = plane_len(codes.len());
        let mut out = vec![0u8; bits as usize * plane];
        for (i, &c) in codes.iter().enumerate() {
            for k in 0..bits as usize {
                if (c >> k) & 1 == 1 {
                    out[k * plane + i / 8] |= 1 << (i % 8);
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn shuffle_matches_the_definition_and_inverts(
            bits in 1u32..=16,
            raw in proptest::collection::vec(any::<u16>(), 0..300),
        ) {
            let mask = if bits == 16 { u16::MAX } else { (1u16 << bits) - 1 };
            let codes: Vec<u16> = raw.iter().map(|c| c & mask).collect();
            let mut planes = vec![0u8; bits as usize * plane_len(codes.len())];
            shuffle(&codes, bits, &mut planes);
            prop_assert_eq!(&planes, &naive(&codes, bits));
            let mut back = vec![0u16; codes.len()];
            unshuffle(&planes, bits, &mut back);
            prop_assert_eq!(back, codes);
        }

        #[test]
        fn byte_shuffle_inverts(values in proptest::collection::vec(any::<f32>(), 0..100)) {
            let mut planes = vec![0u8; 4 * values.len()];
            byte_shuffle_f32(&values, &mut planes);
            let mut back = vec![0f32; values.len()];
            byte_unshuffle_f32(&planes, &mut back);
            prop_assert_eq!(
                back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn zero_codes_give_zero_planes() {
        let mut planes = vec![0xFFu8; 3 * plane_len(20)];
        shuffle(&[0; 20], 3, &mut planes);
        assert!(planes.iter().all(|b| *b == 0));
    }
}
