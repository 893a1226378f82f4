//! Profiles: what the scheduler reads.
//!
//! - [`accuracy`]: the precision-sensitivity profile (DynO's offline accuracy table):
//!   for every split and precision, the accuracy (or agreement) after pack-then-unpack
//!   and the mean packed bytes per codec. Its file format is [`AccuracyProfile`] as
//!   JSON, documented in docs/PACKING.md.
//! - [`latency`]: per-block and per-codec times on this machine, which the scheduler
//!   scales to each device class. Its file format is [`latency::LatencyProfile`] as JSON.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::home::Home;
use crate::pack::{Clip, Codec, Granularity, Precision};

pub mod accuracy;
pub mod jpeg;
pub mod latency;
pub mod validate;

/// Writes a profile as pretty JSON, making its folder.
pub(crate) fn save_json<T: Serialize>(profile: &T, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(profile).expect("a profile always serialises");
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// `out/profiles/<model>.<kind>.json`: where the profile commands write (`model` is the
/// model's name: a built-in's, or the `name` in a package's manifest).
pub fn out_path(home: &Home, model: &str, kind: &str) -> PathBuf {
    out_dir(home).join(format!("{}.{kind}.json", sanitize(model)))
}

/// `out/profiles/` in the project: where every profile command writes.
pub fn out_dir(home: &Home) -> PathBuf {
    home.root().join("out").join("profiles")
}

/// The name profiles are kept under for `model`, a built-in model's name or the folder of
/// a package: the package's manifest `name` (never its path). A folder without a
/// readable manifest keeps its own text, so that the error that follows names it.
pub fn model_name(model: &str) -> String {
    let dir = Path::new(model);
    if dir.join("manifest.toml").is_file() {
        if let Ok(m) = crate::model::torchscript::Manifest::load(dir) {
            return m.name;
        }
    }
    model.to_string()
}

/// The profile of `kind` a command reads when none is named, for `model` (a name or a
/// package folder, [`model_name`]): the one written on this machine (`out/profiles/`) if
/// there is one, else the one shipped in `models/profiles/`.
pub fn find(home: &Home, model: &str, kind: &str) -> PathBuf {
    let file = format!("{}.{kind}.json", sanitize(&model_name(model)));
    find_file(home, &file)
}

/// `out/profiles/FILE` if it exists, else `models/profiles/FILE`.
pub fn find_file(home: &Home, file: &str) -> PathBuf {
    let written = out_dir(home).join(file);
    if written.exists() {
        return written;
    }
    home.root().join("models").join("profiles").join(file)
}

/// The command that writes the profile of `kind` for `model` (as the user named it).
pub fn command_for(model: &str, kind: &str) -> String {
    let quoted;
    let model = if model.contains(char::is_whitespace) {
        quoted = format!("'{model}'");
        &quoted
    } else {
        model
    };
    match kind
        .strip_prefix("latency-")
        .and_then(|t| t.strip_suffix("thread"))
    {
        Some(n) => format!("dyno --threads {n} profile latency --model {model}"),
        None => format!("dyno profile {kind} --model {model}"),
    }
}

/// Why a profile the scheduler needs is not there: its path, what it is for, and the
/// command that makes it.
pub fn missing(path: &Path, purpose: &str, command: &str) -> Error {
    Error::Profile {
        path: path.to_path_buf(),
        reason: format!(
            "there is no {purpose} here; make it with `{command}` (it writes \
             out/profiles/, where every command looks first), or name a file"
        ),
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Version of the profile file format.
pub const ACCURACY_FORMAT: u32 = 1;

/// Which figure the accuracy drop is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Top-1 accuracy against labels.
    Accuracy,
    /// Top-1 agreement with the unpacked (fp32) model, for data without enough labels.
    Agreement,
}

/// The precision-sensitivity profile of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyProfile {
    pub format: u32,
    pub model: String,
    /// Hex of the model's weights hash: a profile is only valid for those weights.
    pub weights_hash: String,
    /// What `drop_points` is measured on.
    pub metric: Metric,
    pub data: String,
    pub inputs: usize,
    /// Top-1 accuracy of the unpacked model (None without labels).
    pub baseline_accuracy: Option<f64>,
    /// How the quantisation ranges were taken: one per tensor or per channel (absent in
    /// older files: `per-tensor`) ...
    #[serde(default)]
    pub granularity: Granularity,
    /// ... and from the values' extremes or clipped (absent in older files: `minmax`).
    /// Agents pack per tensor with min/max ranges, so only such a profile plans a fleet.
    #[serde(default)]
    pub clip: Clip,
    /// One entry per split point where something is sent: 0..N-1 (N, device-only, sends
    /// nothing and loses nothing).
    pub splits: Vec<SplitProfile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitProfile {
    pub split: usize,
    pub after_block: Option<String>,
    pub shape: Vec<i64>,
    /// Bytes of one activation in fp32.
    pub fp32_bytes: u64,
    /// One entry per precision: 1..=16 bits, fp16, fp32.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub precision: Precision,
    /// Top-1 accuracy with packing at this split (None without labels).
    pub accuracy: Option<f64>,
    /// Share of inputs whose top-1 equals the unpacked model's.
    pub agreement: f64,
    /// Loss in percentage points of the profile's metric against the unpacked model,
    /// made monotone in precision: never below a finer precision's at the same split.
    pub drop_points: f64,
    /// Its 95 % interval, monotone the same way (absent in older files): Agresti and
    /// Min's paired interval for accuracy, Wilson's for agreement ([`crate::stats`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_ci95: Option<[f64; 2]>,
    /// The drop as measured, before the table was made monotone (absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_drop_points: Option<f64>,
    /// Mean packed bytes of one activation (header included), per codec.
    pub bytes: CodecBytes,
}

impl Entry {
    /// The drop the scheduler holds against an accuracy budget: the upper end of the
    /// 95 % interval where the profile has one, else the drop itself. A plan is kept
    /// only when this fits, so that a precision is not chosen on luck in the sample.
    pub fn planning_drop(&self) -> f64 {
        self.drop_ci95.map_or(self.drop_points, |[_, hi]| hi)
    }
}

/// Makes one split's entries monotone in precision: walking from the finest precision
/// (fp32) to the coarsest (1 bit), each drop and each end of its interval is raised to
/// at least the finer precision's, so that a coarser precision is never reported
/// better than a finer one. JPEG qualities are their own chain, from the highest
/// quality down. The measured drop is kept in `measured_drop_points`.
pub fn make_monotone(entries: &mut [Entry]) {
    entries.sort_by_key(|e| e.precision); // the JPEGs last, by quality
    let first_jpeg = entries
        .iter()
        .position(|e| e.precision.is_jpeg())
        .unwrap_or(entries.len());
    let (quantised, jpegs) = entries.split_at_mut(first_jpeg);
    for chain in [quantised, jpegs] {
        let (mut drop, mut lo, mut hi) = (f64::NEG_INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
        for e in chain.iter_mut().rev() {
            e.measured_drop_points.get_or_insert(e.drop_points);
            drop = drop.max(e.drop_points);
            e.drop_points = drop;
            if let Some([l, h]) = e.drop_ci95.as_mut() {
                lo = lo.max(*l);
                hi = hi.max(*h);
                (*l, *h) = (lo, hi);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CodecBytes {
    pub none: f64,
    pub lz4: f64,
    pub zstd: f64,
}

impl CodecBytes {
    pub fn get(&self, codec: Codec) -> f64 {
        match codec {
            Codec::None => self.none,
            Codec::Lz4 => self.lz4,
            Codec::Zstd => self.zstd,
        }
    }

    /// The codec with the fewest bytes, and that count.
    pub fn best(&self) -> (Codec, f64) {
        Codec::ALL
            .iter()
            .map(|&c| (c, self.get(c)))
            .fold(
                (Codec::None, f64::INFINITY),
                |a, b| if b.1 < a.1 { b } else { a },
            )
    }
}

/// Per split: the fewest bits whose drop is within a budget, and what they save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitChoice {
    pub split: usize,
    pub fp32_bytes: u64,
    /// The fewest quantised bits within the budget (None: only fp16/fp32 are).
    pub min_bits: Option<u8>,
    pub drop_points: f64,
    /// The drop's 95 % interval, when the profile has one.
    pub drop_ci95: Option<[f64; 2]>,
    pub codec: Codec,
    pub bytes: f64,
    /// fp32 bytes over packed bytes.
    pub reduction: f64,
}

impl AccuracyProfile {
    /// For each split, the smallest precision with a drop of at most `budget_points`.
    pub fn choices(&self, budget_points: f64) -> Vec<SplitChoice> {
        self.splits
            .iter()
            .filter_map(|s| {
                let e = s
                    .entries
                    .iter()
                    .find(|e| e.planning_drop() <= budget_points)?;
                let (codec, bytes) = e.bytes.best();
                Some(SplitChoice {
                    split: s.split,
                    fp32_bytes: s.fp32_bytes,
                    min_bits: match e.precision {
                        Precision::Bits(b) => Some(b),
                        _ => None,
                    },
                    drop_points: e.drop_points,
                    drop_ci95: e.drop_ci95,
                    codec,
                    bytes,
                    reduction: s.fp32_bytes as f64 / bytes,
                })
            })
            .collect()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(self, path)
    }

    pub fn load(path: &Path) -> Result<AccuracyProfile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let p: AccuracyProfile = serde_json::from_str(&text).map_err(|e| Error::Profile {
            path: path.to_path_buf(),
            reason: format!(
                "not an accuracy profile: {e}; write one with `dyno profile accuracy` \
                 (format in docs/PACKING.md)"
            ),
        })?;
        for (i, sp) in p.splits.iter().enumerate() {
            for (j, e) in sp.entries.iter().enumerate() {
                let bad = |key: &str, v: f64| Error::Profile {
                    path: path.to_path_buf(),
                    reason: format!(
                        "splits[{i}].entries[{j}].{key} is {v}: it must be a finite number \
                         >= 0 (drop_points may be negative); rerun `dyno profile accuracy`"
                    ),
                };
                if !e.drop_points.is_finite() {
                    return Err(bad("drop_points", e.drop_points));
                }
                for c in Codec::ALL {
                    let b = e.bytes.get(c);
                    if !(b.is_finite() && b >= 0.0) {
                        return Err(bad(&format!("bytes.{c}"), b));
                    }
                }
            }
        }
        if p.format != ACCURACY_FORMAT {
            return Err(Error::Profile {
                path: path.to_path_buf(),
                reason: format!(
                    "format {} is not {ACCURACY_FORMAT}; rerun `dyno profile accuracy`",
                    p.format
                ),
            });
        }
        Ok(p)
    }
}
