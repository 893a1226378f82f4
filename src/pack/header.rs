//! The self-describing header of a packed tensor (byte layout: docs/PACKING.md).
//!
//! Decoding reads with a cursor that checks every length before it reads, and checks
//! every field before the caller allocates anything from it.
use super::{Codec, DecodeError, Granularity, Precision, Range};

pub const MAGIC: [u8; 4] = *b"DYNP";
pub const VERSION: u8 = 1;
pub const MAX_MODEL_ID: usize = 64;
pub const MAX_DIMS: usize = 8;

/// Everything a receiver needs to unpack and to trust the tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub codec: Codec,
    pub precision: Precision,
    pub granularity: Granularity,
    /// The model the activation belongs to, and a hash of its weights.
    pub model: String,
    pub weights_hash: u64,
    /// The split point the activation crossed.
    pub split: u16,
    /// The full shape, batch dimension included.
    pub shape: Vec<u32>,
    /// One range per tensor, or one per channel (axis 1, and always for a JPEG); none for
    /// fp16/fp32.
    pub ranges: Vec<Range>,
    pub payload_len: u32,
    pub payload_crc: u32,
}

impl Header {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| u64::from(d)).product()
    }

    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.codec as u8);
        let (kind, bits) = match self.precision {
            Precision::Bits(b) => (0u8, b),
            Precision::Fp16 => (1, 0),
            Precision::Fp32 => (2, 0),
            Precision::Jpeg(q) => (3, q),
        };
        out.push(kind);
        out.push(bits);
        out.push(self.granularity as u8);
        out.push(self.model.len() as u8);
        out.extend_from_slice(&self.split.to_le_bytes());
        out.extend_from_slice(&self.weights_hash.to_le_bytes());
        out.push(self.shape.len() as u8);
        out.extend_from_slice(self.model.as_bytes());
        for d in &self.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for r in &self.ranges {
            out.extend_from_slice(&r.min.to_le_bytes());
            out.extend_from_slice(&r.max.to_le_bytes());
        }
        out.extend_from_slice(&self.payload_len.to_le_bytes());
        out.extend_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a header from the front of `buf`; returns it and its length in bytes.
    /// `max_elements` bounds the tensor before anything is allocated for it.
    pub fn decode(buf: &[u8], max_elements: u64) -> Result<(Header, usize), DecodeError> {
        let mut c = Cursor { buf, pos: 0 };
        if c.take(4)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = c.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let codec = Codec::from_u8(c.u8()?)?;
        let (kind, bits) = (c.u8()?, c.u8()?);
        let precision = match (kind, bits) {
            (0, 1..=16) => Precision::Bits(bits),
            (1, 0) => Precision::Fp16,
            (2, 0) => Precision::Fp32,
            (3, 1..=100) => Precision::Jpeg(bits),
            _ => return Err(DecodeError::BadPrecision { kind, bits }),
        };
        let granularity = match c.u8()? {
            0 => Granularity::PerTensor,
            1 => Granularity::PerChannel,
            g => return Err(DecodeError::BadGranularity(g)),
        };
        let id_len = c.u8()? as usize;
        let split = c.u16()?;
        let weights_hash = c.u64()?;
        let ndim = c.u8()? as usize;
        if id_len > MAX_MODEL_ID {
            return Err(DecodeError::BadModelId);
        }
        let model = std::str::from_utf8(c.take(id_len)?)
            .map_err(|_| DecodeError::BadModelId)?
            .to_string();
        if !(1..=MAX_DIMS).contains(&ndim) {
            return Err(DecodeError::BadShape(format!(
                "{ndim} dimensions, expected 1..={MAX_DIMS}"
            )));
        }
        let mut shape = Vec::with_capacity(ndim);
        let mut elements = 1u64;
        for _ in 0..ndim {
            let d = c.u32()?;
            if d == 0 {
                return Err(DecodeError::BadShape("a dimension of size 0".into()));
            }
            elements = elements.saturating_mul(u64::from(d));
            shape.push(d);
        }
        if elements > max_elements {
            return Err(DecodeError::TooLarge {
                elements,
                limit: max_elements,
            });
        }
        let n_ranges = c.u32()? as usize;
        let expected_ranges = match (precision, granularity) {
            (Precision::Bits(_), Granularity::PerTensor) => 1,
            (Precision::Bits(_), Granularity::PerChannel) => {
                if ndim < 2 {
                    return Err(DecodeError::BadShape(
                        "per-channel ranges need at least 2 dimensions".into(),
                    ));
                }
                shape[1] as usize
            }
            (Precision::Jpeg(_), Granularity::PerChannel) => {
                if ndim != 4 || !matches!(shape[1], 1 | 3) || codec != Codec::None {
                    return Err(DecodeError::Inconsistent(format!(
                        "a JPEG of shape {shape:?} with codec {codec}: JPEG is sent as \
                         [N, 1 or 3, H, W] with codec none"
                    )));
                }
                shape[1] as usize
            }
            (Precision::Jpeg(_), Granularity::PerTensor) => {
                return Err(DecodeError::Inconsistent(
                    "a JPEG carries one range per channel".into(),
                ))
            }
            _ => 0,
        };
        if n_ranges != expected_ranges {
            return Err(DecodeError::Inconsistent(format!(
                "{n_ranges} ranges for a {precision} {granularity} tensor of shape {shape:?}, expected {expected_ranges}"
            )));
        }
        // The ranges' bytes are checked to be there before the vector is allocated.
        let range_bytes = c.take(8 * n_ranges)?;
        let mut ranges = Vec::with_capacity(n_ranges);
        for (i, r) in range_bytes.chunks_exact(8).enumerate() {
            let min = f32::from_le_bytes(r[..4].try_into().expect("4 bytes"));
            let max = f32::from_le_bytes(r[4..].try_into().expect("4 bytes"));
            if !(min.is_finite() && max.is_finite() && min <= max && (max - min).is_finite()) {
                return Err(DecodeError::BadRange { index: i, min, max });
            }
            ranges.push(Range { min, max });
        }
        let payload_len = c.u32()?;
        let payload_crc = c.u32()?;
        let header_end = c.pos;
        let crc = c.u32()?;
        let actual = crc32fast::hash(&buf[..header_end]);
        // Under the fuzzer the checksums are not enforced, so that it explores past them.
        if crc != actual && !cfg!(fuzzing) {
            return Err(DecodeError::HeaderChecksum);
        }
        let header = Header {
            codec,
            precision,
            granularity,
            model,
            weights_hash,
            split,
            shape,
            ranges,
            payload_len,
            payload_crc,
        };
        Ok((header, c.pos))
    }
}

/// A bounds-checked reader over the input.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated {
                needed: self.pos.saturating_add(n),
                got: self.buf.len(),
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}
