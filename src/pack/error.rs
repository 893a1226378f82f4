//! The errors of packing and unpacking: small enums, cheap on the hot path, each
//! message naming the offending value.
use super::{MAX_MODEL_ID, VERSION};

/// Why a tensor could not be packed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PackError {
    #[error(
        "element {index} (index {position:?}) is {value}: a NaN or infinite activation cannot be \
         packed; check the input frame and the model's weights"
    )]
    NonFinite {
        index: usize,
        position: Vec<usize>,
        value: f32,
    },
    #[error(
        "element {index} (index {position:?}) is {value}, beyond fp16's range (+-65504); pack it \
         quantised or as fp32"
    )]
    Fp16Overflow {
        index: usize,
        position: Vec<usize>,
        value: f32,
    },
    #[error("the values span [{min}, {max}], wider than fp32 can step through; pack them as fp32")]
    RangeOverflow { min: f32, max: f32 },
    #[error("bits must be 1..=16, got {0}")]
    BadBits(u8),
    #[error(
        "precision must be 1..=16, fp16, fp32 or jpegQ (a JPEG of quality Q, 1..=100), got `{0}`"
    )]
    BadPrecision(String),
    #[error("cannot pack as JPEG: {0}")]
    Jpeg(String),
    #[error("bad shape: {0}")]
    Shape(String),
    #[error("model id `{0}` is longer than {MAX_MODEL_ID} bytes")]
    ModelId(String),
    #[error("compression failed: {0}")]
    Compress(String),
}

/// Why a buffer could not be unpacked. Small and cheap: it is the hot path's error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated packed tensor: needs at least {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    #[error("not a packed tensor (bad magic bytes)")]
    BadMagic,
    #[error("packed tensor format version {0} is unknown; this dyno reads version {VERSION}")]
    UnknownVersion(u8),
    #[error("unknown codec {0}; known: 0 none, 1 lz4, 2 zstd")]
    UnknownCodec(u8),
    #[error(
        "bad precision (kind {kind}, bits {bits}); bits must be 1..=16, or fp16/fp32, or a \
         JPEG's quality 1..=100"
    )]
    BadPrecision { kind: u8, bits: u8 },
    #[error("unknown granularity {0}; known: 0 per-tensor, 1 per-channel")]
    BadGranularity(u8),
    #[error("model id is not UTF-8 of at most {MAX_MODEL_ID} bytes")]
    BadModelId,
    #[error("bad shape: {0}")]
    BadShape(String),
    #[error("tensor of {elements} elements is over the limit of {limit}")]
    TooLarge { elements: u64, limit: u64 },
    #[error("range {index} is [{min}, {max}]: not finite, min > max, or too wide for fp32")]
    BadRange { index: usize, min: f32, max: f32 },
    #[error("inconsistent packed tensor: {0}")]
    Inconsistent(String),
    #[error("header checksum mismatch: the header is corrupted")]
    HeaderChecksum,
    #[error("payload checksum mismatch: the payload is corrupted")]
    PayloadChecksum,
    #[error("decompression failed: {0}")]
    Decompress(String),
}
