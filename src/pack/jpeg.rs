//! JPEG as a precision of a picture-shaped tensor: what a camera sends at split 0.
//!
//! A `[N, C, H, W]` tensor with 1 or 3 channels is mapped, channel by channel, from its
//! range `[min, max]` (kept in the header, one per channel) onto 0..=255, and each of its
//! `N` items is JPEG-encoded at the precision's quality by the `image` crate. The
//! payload is the items' JPEGs in order, each after its length (u32, little-endian).
//! For the model's input the ranges are those of the frame's pixels, normalised: the
//! JPEG holds the camera's picture, stretched to the full 0..=255 in each channel.
use std::io::Cursor;

use image::codecs::jpeg::{JpegDecoder, JpegEncoder};
use image::{ColorType, ExtendedColorType, ImageDecoder};

use super::{DecodeError, PackError, Range};

/// The qualities a profile measures and a plan may pick (`Precision::Jpeg`).
pub const QUALITIES: [u8; 4] = [50, 75, 90, 95];

/// Whether a tensor of `shape` (batch first) can be sent as JPEG: 4 dimensions, 1 or 3
/// channels, each side within JPEG's 65,535.
pub fn fits(shape: &[usize]) -> bool {
    shape.len() == 4 && matches!(shape[1], 1 | 3) && shape[2] <= 65_535 && shape[3] <= 65_535
}

fn color(channels: usize) -> (ExtendedColorType, ColorType) {
    if channels == 1 {
        (ExtendedColorType::L8, ColorType::L8)
    } else {
        (ExtendedColorType::Rgb8, ColorType::Rgb8)
    }
}

/// The 8-bit code of `v` in `r`, and back.
fn code(v: f32, r: Range) -> u8 {
    let w = r.max - r.min;
    if w > 0.0 {
        ((v - r.min) / w * 255.0).round().clamp(0.0, 255.0) as u8
    } else {
        0
    }
}

fn value(c: u8, r: Range) -> f32 {
    r.min + f32::from(c) / 255.0 * (r.max - r.min)
}

/// Appends the JPEGs of `values` (`shape` checked by [`fits`], `ranges` one per channel)
/// to `out`.
pub(super) fn encode(
    values: &[f32],
    shape: &[usize],
    ranges: &[Range],
    quality: u8,
    out: &mut Vec<u8>,
) -> Result<(), PackError> {
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    let plane = h * w;
    let mut pixels = vec![0u8; c * plane];
    for item in values.chunks_exact(c * plane) {
        // Planar (C, H, W) to interleaved (H, W, C).
        for (ch, (src, r)) in item.chunks_exact(plane).zip(ranges).enumerate() {
            for (i, &v) in src.iter().enumerate() {
                pixels[i * c + ch] = code(v, *r);
            }
        }
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        JpegEncoder::new_with_quality(&mut *out, quality)
            .encode(&pixels, w as u32, h as u32, color(c).0)
            .map_err(|e| PackError::Compress(format!("JPEG encoding: {e}")))?;
        let len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// Decodes a payload made by [`encode`] into `values` (sized for `shape`). Each JPEG's
/// size and colours are checked against the header before its pixels are decoded.
pub(super) fn decode(
    payload: &[u8],
    shape: &[u32],
    ranges: &[Range],
    values: &mut [f32],
) -> Result<(), DecodeError> {
    let (c, h, w) = (shape[1] as usize, shape[2], shape[3]);
    let plane = (h * w) as usize;
    let mut rest = payload;
    let mut pixels = vec![0u8; c * plane];
    for (i, item) in values.chunks_exact_mut(c * plane).enumerate() {
        let bad = |why: String| DecodeError::Inconsistent(format!("JPEG of item {i}: {why}"));
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("the payload ends before its length".into()))?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(bad(format!(
                "{len} bytes announced, {} left in the payload",
                tail.len()
            )));
        }
        let (jpeg, tail) = tail.split_at(len);
        rest = tail;
        let decoder =
            JpegDecoder::new(Cursor::new(jpeg)).map_err(|e| bad(format!("not a JPEG: {e}")))?;
        if decoder.dimensions() != (w, h) || decoder.color_type() != color(c).1 {
            return Err(bad(format!(
                "{:?} of {}x{}, the header says {:?} of {w}x{h}",
                decoder.color_type(),
                decoder.dimensions().0,
                decoder.dimensions().1,
                color(c).1
            )));
        }
        decoder
            .read_image(&mut pixels)
            .map_err(|e| bad(format!("not a JPEG: {e}")))?;
        for (ch, (dst, r)) in item.chunks_exact_mut(plane).zip(ranges).enumerate() {
            for (j, v) in dst.iter_mut().enumerate() {
                *v = value(pixels[j * c + ch], *r);
            }
        }
    }
    if !rest.is_empty() {
        return Err(DecodeError::Inconsistent(format!(
            "{} bytes after the last JPEG",
            rest.len()
        )));
    }
    Ok(())
}
