//! The library's error type. Every message names the offending value and the fix.
use std::path::PathBuf;

/// The library's error: models, weights, data, profiles, packing, files, libtorch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown model `{name}`: the built-in models are {known}; a user model is a folder \
         holding a manifest.toml (see models/README.md)"
    )]
    UnknownModel { name: String, known: String },

    #[error(
        "weights for `{model}` are missing: {path} does not exist; run `scripts/setup.sh` \
         (the README's first command runs it) to fetch and convert them"
    )]
    WeightsMissing { model: String, path: PathBuf },

    #[error("weights for `{model}` at {path} are not usable: {reason}")]
    WeightsInvalid {
        model: String,
        path: PathBuf,
        reason: String,
    },

    #[error(
        "split {split} is out of range for `{model}`: it has {blocks} blocks, so split points \
         are 0..={blocks} (0 = cloud-only, {blocks} = device-only)"
    )]
    SplitOutOfRange {
        model: String,
        split: usize,
        blocks: usize,
    },

    #[error(
        "wrong input shape for `{model}` at split {split}: expected [batch, {expected}], got \
         {got:?}; {hint}"
    )]
    WrongShape {
        model: String,
        split: usize,
        expected: String,
        got: Vec<i64>,
        hint: &'static str,
    },

    #[error("model package {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    #[error("{path} is not a readable image ({reason}); give a JPEG or PNG file")]
    BadImage { path: PathBuf, reason: String },

    #[error("dataset at {path} is not usable ({reason}); run `scripts/setup.sh` to fetch it")]
    Dataset { path: PathBuf, reason: String },

    #[error("profile {path}: {reason}")]
    Profile { path: PathBuf, reason: String },

    #[error("packing: {0}")]
    Pack(#[from] crate::pack::PackError),

    #[error("unpacking: {0}")]
    Unpack(#[from] crate::pack::DecodeError),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
