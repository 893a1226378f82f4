//! CNN-specific data packing: the activation at the cut, made small.
//!
//! Three stages (DESIGN.md section 1), pure Rust over plain slices:
//! 1. *input-specific quantisation* ([`quant`]): per tensor (or per channel), uniform,
//!    unsigned, asymmetric, to `bits` in 1..=16; fp16 and fp32 pass through;
//! 2. *bit shuffling* ([`shuffle`]): codes into bit-planes;
//! 3. *lossless compression*: none, LZ4 (`lz4_flex`) or zstd at a low level.
//!
//! The result starts with a self-describing [`Header`] (format: docs/PACKING.md).
//! [`unpack`] checks every field and both checksums before it trusts or allocates
//! anything, and returns a typed [`DecodeError`] for any bad buffer, never a panic.
//! tch tensors are converted at the edge, in [`tensor`].
use std::fmt;

mod error;
mod header;
pub mod jpeg;
pub mod quant;
pub mod shuffle;
pub mod tensor;

pub use error::{DecodeError, PackError};
pub use header::{Header, MAX_DIMS, MAX_MODEL_ID, VERSION};
pub use quant::Range;

/// How precisely values travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// Quantised to this many bits (1..=16).
    Bits(u8),
    /// IEEE half precision.
    Fp16,
    /// Unchanged.
    Fp32,
    /// A JPEG of this quality (1..=100) per item, for a picture-shaped tensor: 1 or 3
    /// channels ([`jpeg`]). Lossy at every quality; its own chain, never compared with
    /// the others by order.
    Jpeg(u8),
}

impl Precision {
    /// Every precision the scheduler chooses from: 1..=16 bits, fp16, fp32.
    pub fn all() -> Vec<Precision> {
        let mut v: Vec<Precision> = (1..=16).map(Precision::Bits).collect();
        v.extend([Precision::Fp16, Precision::Fp32]);
        v
    }

    /// The precisions a tensor of `shape` (without the batch) may be sent at from
    /// `split`: [`Precision::all`], and at split 0, a picture's, the JPEG qualities.
    pub fn at_split(split: usize, shape: &[usize]) -> Vec<Precision> {
        let mut v = Precision::all();
        let with_batch: Vec<usize> = std::iter::once(1).chain(shape.iter().copied()).collect();
        if split == 0 && jpeg::fits(&with_batch) {
            v.extend(jpeg::QUALITIES.map(Precision::Jpeg));
        }
        v
    }

    pub fn is_jpeg(self) -> bool {
        matches!(self, Precision::Jpeg(_))
    }

    /// The codecs this precision is sent with: a JPEG is already compressed (`none`).
    pub fn codecs(self) -> &'static [Codec] {
        if self.is_jpeg() {
            &[Codec::None]
        } else {
            &Codec::ALL
        }
    }

    /// Bits each value takes on the wire before compression (fp16: 16, fp32: 32, a JPEG's
    /// pixels: 8).
    pub fn bits_per_value(self) -> u8 {
        match self {
            Precision::Bits(b) => b,
            Precision::Fp16 => 16,
            Precision::Fp32 => 32,
            Precision::Jpeg(_) => 8,
        }
    }

    /// Quantised precision, with the bits checked.
    pub fn bits(bits: u8) -> Result<Precision, PackError> {
        if (1..=16).contains(&bits) {
            Ok(Precision::Bits(bits))
        } else {
            Err(PackError::BadBits(bits))
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precision::Bits(b) => write!(f, "{b}"),
            Precision::Fp16 => f.write_str("fp16"),
            Precision::Fp32 => f.write_str("fp32"),
            Precision::Jpeg(q) => write!(f, "jpeg{q}"),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = PackError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp16" => Ok(Precision::Fp16),
            "fp32" => Ok(Precision::Fp32),
            _ if s.starts_with("jpeg") => match s["jpeg".len()..].parse::<u8>() {
                Ok(q @ 1..=100) => Ok(Precision::Jpeg(q)),
                _ => Err(PackError::BadPrecision(s.to_string())),
            },
            _ => match s.parse::<u8>() {
                Ok(b) => Precision::bits(b),
                Err(_) => Err(PackError::BadPrecision(s.to_string())),
            },
        }
    }
}

impl serde::Serialize for Precision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Precision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The lossless compressor after bit shuffling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Codec {
    None = 0,
    Lz4 = 1,
    Zstd = 2,
}

impl Codec {
    pub const ALL: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd];

    fn from_u8(v: u8) -> Result<Codec, DecodeError> {
        match v {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Lz4),
            2 => Ok(Codec::Zstd),
            _ => Err(DecodeError::UnknownCodec(v)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One quantisation range per tensor, or one per channel (axis 1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Granularity {
    #[default]
    PerTensor = 0,
    PerChannel = 1,
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granularity::PerTensor => "per-tensor",
            Granularity::PerChannel => "per-channel",
        })
    }
}

/// How a quantisation range is taken from the values it covers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Clip {
    /// The values' minimum and maximum: every value within half a step.
    #[default]
    MinMax,
    /// The sub-range that minimises the squared round-trip error ([`quant::clip_mse`]):
    /// the rare largest values are clipped so that the rest get finer steps.
    Mse,
}

impl Clip {
    pub fn name(self) -> &'static str {
        match self {
            Clip::MinMax => "minmax",
            Clip::Mse => "mse",
        }
    }
}

impl std::str::FromStr for Clip {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minmax" => Ok(Clip::MinMax),
            "mse" => Ok(Clip::Mse),
            _ => Err(format!(
                "unknown range rule {s:?}: use \"minmax\" or \"mse\""
            )),
        }
    }
}

impl fmt::Display for Clip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to pack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackOptions {
    pub precision: Precision,
    pub codec: Codec,
    pub granularity: Granularity,
    /// How each group's range is taken (the format does not depend on it).
    pub clip: Clip,
    /// zstd level (1 is fast; the format does not depend on it).
    pub zstd_level: i32,
}

impl PackOptions {
    pub fn new(precision: Precision, codec: Codec) -> Self {
        PackOptions {
            precision,
            codec,
            granularity: Granularity::PerTensor,
            clip: Clip::MinMax,
            zstd_level: 1,
        }
    }
}

/// Which activation this is: the model, its weights, the split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorId<'a> {
    pub model: &'a str,
    pub weights_hash: u64,
    pub split: u16,
}

/// Limits a receiver puts on what it unpacks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    /// Largest number of elements (default 2^26: 256 MiB of fp32).
    pub max_elements: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_elements: 1 << 26,
        }
    }
}

/// An unpacked tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Unpacked {
    pub header: Header,
    pub values: Vec<f32>,
}

/// Packs `values` of `shape` (row-major, batch first). Allocates fresh scratch space;
/// use a [`Packer`] to reuse it across calls.
pub fn pack(
    values: &[f32],
    shape: &[usize],
    id: &TensorId,
    opts: &PackOptions,
) -> Result<Vec<u8>, PackError> {
    let mut out = Vec::new();
    Packer::default().pack_into(values, shape, id, opts, &mut out)?;
    Ok(out)
}

/// Unpacks a buffer made by [`pack`], checking it all.
pub fn unpack(buf: &[u8], limits: &DecodeLimits) -> Result<Unpacked, DecodeError> {
    Packer::default().unpack(buf, limits)
}

/// Packs and unpacks with reusable scratch buffers.
#[derive(Default)]
pub struct Packer {
    codes: Vec<u16>,
    planes: Vec<u8>,
    payload: Vec<u8>,
}

/// Bytes of the shuffled stream for `n` elements at `precision`.
fn raw_len(precision: Precision, n: usize) -> usize {
    match precision {
        Precision::Bits(b) => b as usize * shuffle::plane_len(n),
        Precision::Fp16 => 16 * shuffle::plane_len(n),
        Precision::Fp32 => 4 * n,
        Precision::Jpeg(_) => 0,
    }
}

/// One range per channel (axis 1) of a tensor of `shape`, over every item; `Err` holds
/// the flat index of a value that is not finite.
fn channel_ranges(values: &[f32], shape: &[usize]) -> Result<Vec<Range>, usize> {
    let (items, channels) = (shape[0], shape[1]);
    let inner = values.len() / (items * channels);
    let mut ranges = vec![Range::EMPTY; channels];
    for (g, group) in values.chunks_exact(inner).enumerate() {
        let r = quant::range_of(group).map_err(|i| g * inner + i)?;
        ranges[g % channels] = ranges[g % channels].merge(r);
    }
    Ok(ranges)
}

/// A range whose width fp32 can hold (so every dequantised value is finite).
fn checked_width(r: Range) -> Result<Range, PackError> {
    if (r.max - r.min).is_finite() {
        Ok(r)
    } else {
        Err(PackError::RangeOverflow {
            min: r.min,
            max: r.max,
        })
    }
}

/// Row-major multi-index of flat index `i`.
fn position(shape: &[usize], mut i: usize) -> Vec<usize> {
    let mut pos = vec![0; shape.len()];
    for (p, &d) in pos.iter_mut().zip(shape).rev() {
        *p = i % d.max(1);
        i /= d.max(1);
    }
    pos
}

impl Packer {
    /// Packs into `out` (cleared first).
    pub fn pack_into(
        &mut self,
        values: &[f32],
        shape: &[usize],
        id: &TensorId,
        opts: &PackOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), PackError> {
        let n = values.len();
        if shape.is_empty()
            || shape.len() > MAX_DIMS
            || shape.iter().any(|&d| d == 0 || d > u32::MAX as usize)
        {
            return Err(PackError::Shape(format!(
                "shape {shape:?} must have 1..={MAX_DIMS} dimensions, each 1..=2^32-1"
            )));
        }
        if shape.iter().product::<usize>() != n {
            return Err(PackError::Shape(format!(
                "shape {shape:?} does not hold {n} values"
            )));
        }
        if id.model.len() > MAX_MODEL_ID {
            return Err(PackError::ModelId(id.model.to_string()));
        }
        let nonfinite = |index: usize| PackError::NonFinite {
            index,
            position: position(shape, index),
            value: values[index],
        };
        let raw = raw_len(opts.precision, n);
        self.planes.clear();
        self.planes.resize(raw, 0);
        let mut ranges = Vec::new();
        let mut granularity = opts.granularity;
        match opts.precision {
            Precision::Bits(bits) => {
                let bits = u32::from(bits);
                if !(1..=16).contains(&bits) {
                    return Err(PackError::BadBits(bits as u8));
                }
                if granularity == Granularity::PerChannel && shape.len() >= 2 {
                    self.codes.clear();
                    self.codes.resize(n, 0);
                    let (items, channels) = (shape[0], shape[1]);
                    let inner = n / (items * channels);
                    ranges = channel_ranges(values, shape).map_err(nonfinite)?;
                    for (ch, r) in ranges.iter_mut().enumerate() {
                        checked_width(*r)?;
                        if opts.clip == Clip::Mse {
                            let groups = values.chunks_exact(inner).skip(ch).step_by(channels);
                            *r = quant::clip_mse(groups, *r, bits);
                        }
                    }
                    for (g, (group, codes)) in values
                        .chunks_exact(inner)
                        .zip(self.codes.chunks_exact_mut(inner))
                        .enumerate()
                    {
                        quant::quantise(group, ranges[g % channels], bits, codes);
                    }
                    shuffle::shuffle(&self.codes, bits, &mut self.planes);
                } else {
                    granularity = Granularity::PerTensor;
                    let mut r = checked_width(quant::range_of(values).map_err(nonfinite)?)?;
                    if opts.clip == Clip::Mse {
                        r = quant::clip_mse([values], r, bits);
                    }
                    quant::quantise_shuffle(values, r, bits, &mut self.planes);
                    ranges.push(r);
                }
            }
            Precision::Fp16 => {
                granularity = Granularity::PerTensor;
                self.codes.clear();
                self.codes.reserve(n);
                for (i, &v) in values.iter().enumerate() {
                    if !v.is_finite() {
                        return Err(nonfinite(i));
                    }
                    if v.abs() > 65504.0 {
                        return Err(PackError::Fp16Overflow {
                            index: i,
                            position: position(shape, i),
                            value: v,
                        });
                    }
                    self.codes.push(half::f16::from_f32(v).to_bits());
                }
                shuffle::shuffle(&self.codes, 16, &mut self.planes);
            }
            Precision::Fp32 => {
                granularity = Granularity::PerTensor;
                if let Err(i) = quant::range_of(values) {
                    return Err(nonfinite(i));
                }
                shuffle::byte_shuffle_f32(values, &mut self.planes);
            }
            Precision::Jpeg(quality) => {
                if !jpeg::fits(shape) {
                    return Err(PackError::Jpeg(format!(
                        "shape {shape:?} is not a picture: a JPEG holds [N, 1 or 3, H, W] \
                         with sides up to 65535; send this split quantised"
                    )));
                }
                if opts.codec != Codec::None {
                    return Err(PackError::Jpeg(format!(
                        "a JPEG is already compressed: pack it with codec none, not {}",
                        opts.codec
                    )));
                }
                if !(1..=100).contains(&quality) {
                    return Err(PackError::BadPrecision(opts.precision.to_string()));
                }
                granularity = Granularity::PerChannel;
                ranges = channel_ranges(values, shape).map_err(nonfinite)?;
                for r in &ranges {
                    checked_width(*r)?;
                }
                self.payload.clear();
                jpeg::encode(values, shape, &ranges, quality, &mut self.payload)?;
            }
        }
        let payload: &[u8] = match opts.codec {
            _ if opts.precision.is_jpeg() => &self.payload,
            Codec::None => &self.planes,
            Codec::Lz4 => {
                self.payload.clear();
                self.payload
                    .resize(lz4_flex::block::get_maximum_output_size(raw), 0);
                let len = lz4_flex::block::compress_into(&self.planes, &mut self.payload)
                    .map_err(|e| PackError::Compress(e.to_string()))?;
                self.payload.truncate(len);
                &self.payload
            }
            Codec::Zstd => {
                self.payload.clear();
                self.payload.resize(zstd::zstd_safe::compress_bound(raw), 0);
                let len = zstd::bulk::compress_to_buffer(
                    &self.planes,
                    &mut self.payload[..],
                    opts.zstd_level,
                )
                .map_err(|e| PackError::Compress(e.to_string()))?;
                self.payload.truncate(len);
                &self.payload
            }
        };
        let header = Header {
            codec: opts.codec,
            precision: opts.precision,
            granularity,
            model: id.model.to_string(),
            weights_hash: id.weights_hash,
            split: id.split,
            shape: shape.iter().map(|&d| d as u32).collect(),
            ranges,
            payload_len: u32::try_from(payload.len())
                .map_err(|_| PackError::Shape("payload over 4 GiB".into()))?,
            payload_crc: crc32fast::hash(payload),
        };
        out.clear();
        header.encode(out);
        out.extend_from_slice(payload);
        Ok(())
    }

    /// Unpacks `buf`, checking the header, the lengths and both checksums first.
    pub fn unpack(&mut self, buf: &[u8], limits: &DecodeLimits) -> Result<Unpacked, DecodeError> {
        let mut values = Vec::new();
        let header = self.unpack_into(buf, limits, &mut values)?;
        Ok(Unpacked { header, values })
    }

    /// Like [`Packer::unpack`], into a reused `values` buffer (resized to fit).
    pub fn unpack_into(
        &mut self,
        buf: &[u8],
        limits: &DecodeLimits,
        values: &mut Vec<f32>,
    ) -> Result<Header, DecodeError> {
        let (header, header_len) = Header::decode(buf, limits.max_elements)?;
        let payload = &buf[header_len..];
        if payload.len() != header.payload_len as usize {
            return Err(DecodeError::Inconsistent(format!(
                "header says {} payload bytes, the buffer holds {}",
                header.payload_len,
                payload.len()
            )));
        }
        if crc32fast::hash(payload) != header.payload_crc && !cfg!(fuzzing) {
            return Err(DecodeError::PayloadChecksum);
        }
        let n = header.elements() as usize; // bounded by limits.max_elements
        values.clear();
        values.resize(n, 0.0);
        if header.precision.is_jpeg() {
            // No JPEG of a picture is larger than its fp32 values, with room for headers.
            let bound = 4 * n + 4096 * header.shape[0] as usize;
            if payload.len() > bound {
                return Err(DecodeError::Inconsistent(format!(
                    "{} JPEG bytes for {n} values; at most {bound}",
                    payload.len()
                )));
            }
            jpeg::decode(payload, &header.shape, &header.ranges, values)?;
            return Ok(header);
        }
        let raw = raw_len(header.precision, n);
        let bound = match header.codec {
            Codec::None => raw,
            Codec::Lz4 => lz4_flex::block::get_maximum_output_size(raw),
            Codec::Zstd => zstd::zstd_safe::compress_bound(raw),
        };
        if payload.len() > bound {
            return Err(DecodeError::Inconsistent(format!(
                "{} payload bytes for {raw} shuffled bytes; {} allows at most {bound}",
                payload.len(),
                header.codec
            )));
        }
        let planes: &[u8] = match header.codec {
            Codec::None => {
                if payload.len() != raw {
                    return Err(DecodeError::Inconsistent(format!(
                        "uncompressed payload of {} bytes, expected {raw}",
                        payload.len()
                    )));
                }
                payload
            }
            Codec::Lz4 | Codec::Zstd => {
                self.planes.clear();
                self.planes.resize(raw, 0);
                let got = if header.codec == Codec::Lz4 {
                    lz4_flex::block::decompress_into(payload, &mut self.planes)
                        .map_err(|e| DecodeError::Decompress(e.to_string()))?
                } else {
                    zstd::bulk::decompress_to_buffer(payload, &mut self.planes[..])
                        .map_err(|e| DecodeError::Decompress(e.to_string()))?
                };
                if got != raw {
                    return Err(DecodeError::Decompress(format!(
                        "{got} bytes decompressed, expected {raw}"
                    )));
                }
                &self.planes
            }
        };
        match header.precision {
            Precision::Bits(bits) => {
                let bits = u32::from(bits);
                if header.granularity == Granularity::PerChannel {
                    self.codes.clear();
                    self.codes.resize(n, 0);
                    shuffle::unshuffle(planes, bits, &mut self.codes);
                    let channels = header.shape[1] as usize;
                    let inner = n / (header.shape[0] as usize * channels);
                    for (g, (codes, out)) in self
                        .codes
                        .chunks_exact(inner)
                        .zip(values.chunks_exact_mut(inner))
                        .enumerate()
                    {
                        quant::dequantise(codes, header.ranges[g % channels], bits, out);
                    }
                } else {
                    quant::unshuffle_dequantise(planes, header.ranges[0], bits, values);
                }
            }
            Precision::Fp16 => {
                self.codes.clear();
                self.codes.resize(n, 0);
                shuffle::unshuffle(planes, 16, &mut self.codes);
                for (v, &c) in values.iter_mut().zip(&self.codes) {
                    *v = half::f16::from_bits(c).to_f32();
                }
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(DecodeError::Inconsistent(format!(
                        "fp16 element {i} is not finite"
                    )));
                }
            }
            Precision::Fp32 => {
                shuffle::byte_unshuffle_f32(planes, values);
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(DecodeError::Inconsistent(format!(
                        "fp32 element {i} is not finite"
                    )));
                }
            }
            Precision::Jpeg(_) => {} // decoded and returned above
        }
        Ok(header)
    }
}
