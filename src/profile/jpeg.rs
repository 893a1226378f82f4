//! JPEG at split 0 added to a model's profiles: what a camera sends, as a precision the
//! scheduler can pick and the input cloud-only sends (`pack::jpeg`).
//!
//! `dyno profile accuracy` and `dyno profile latency` measure the JPEG qualities with
//! every other precision. `dyno profile jpeg` measures only them, by the same code
//! ([`accuracy::measure`], [`latency::codec_rows`]), and puts them into existing
//! profiles, so that a profile made before JPEG was a precision need not be re-made.
use std::path::Path;

use tch::Tensor;

use super::accuracy::{self, AccuracyOptions, ProfileInputs};
use super::latency::{self, CodecLatency, LatencyProfile};
use super::{AccuracyProfile, Entry};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::pack::{jpeg, Precision};

fn refuse(path: &Path, reason: String) -> Error {
    Error::Profile {
        path: path.to_path_buf(),
        reason,
    }
}

fn qualities_of(path: &Path, qualities: &[u8]) -> Result<Vec<Precision>> {
    qualities
        .iter()
        .map(|&q| {
            if (1..=100).contains(&q) {
                Ok(Precision::Jpeg(q))
            } else {
                Err(refuse(
                    path,
                    format!("JPEG quality {q}: a quality is 1 to 100, e.g. 50,75,90,95"),
                ))
            }
        })
        .collect()
}

fn same_model(path: &Path, model: &Model, name: &str, hash: &str) -> Result<()> {
    let ours = format!("{:016x}", model.weights_hash());
    if name != model.name() || hash != ours {
        return Err(refuse(
            path,
            format!(
                "this profile is of `{name}` (weights {hash}), not of `{}` (weights \
                 {ours}); give the model's own profile",
                model.name()
            ),
        ));
    }
    Ok(())
}

/// Measures each quality at split 0 on `inputs` (the profile's own data) and puts the
/// entries into `profile`, replacing any JPEG entries it had; the split is made
/// monotone again. Returns the new entries.
pub fn add_to_accuracy(
    model: &Model,
    inputs: &ProfileInputs,
    opts: &AccuracyOptions,
    (profile, path): (&mut AccuracyProfile, &Path),
    qualities: &[u8],
) -> Result<Vec<Entry>> {
    same_model(path, model, &profile.model, &profile.weights_hash)?;
    let n = inputs.xs.size()[0] as usize;
    let n = opts.limit.map_or(n, |l| l.min(n));
    if n != profile.inputs {
        return Err(refuse(
            path,
            format!(
                "measured on {} inputs ({}), these are {n} ({}): measure the JPEG on the \
                 profile's own data, or re-make the whole profile with `dyno profile \
                 accuracy --model {}`",
                profile.inputs,
                profile.data,
                inputs.description,
                model.name()
            ),
        ));
    }
    let Some(split0) = profile.splits.iter_mut().find(|s| s.split == 0) else {
        return Err(refuse(
            path,
            "it has no split 0; re-make it with `dyno profile accuracy`".into(),
        ));
    };
    let shape: Vec<usize> = std::iter::once(1)
        .chain(split0.shape.iter().map(|&d| d as usize))
        .collect();
    if !jpeg::fits(&shape) {
        return Err(refuse(
            path,
            format!(
                "{}'s input {:?} is not a picture (a JPEG holds 1 or 3 channels)",
                model.name(),
                split0.shape
            ),
        ));
    }
    let entries = accuracy::measure(model, inputs, opts, 0, &qualities_of(path, qualities)?)?;
    split0.entries.retain(|e| !e.precision.is_jpeg());
    split0.entries.extend(entries.iter().cloned());
    super::make_monotone(&mut split0.entries);
    Ok(split0
        .entries
        .iter()
        .filter(|e| e.precision.is_jpeg())
        .cloned()
        .collect())
}

/// Times packing and unpacking each quality at split 0 on `x` (`[1, C, H, W]`), with the
/// profile's own thread count and runs, and puts the rows into `profile`, replacing any
/// JPEG rows it had. Returns the new rows.
pub fn add_to_latency(
    model: &Model,
    x: &Tensor,
    (profile, path): (&mut LatencyProfile, &Path),
    qualities: &[u8],
) -> Result<Vec<CodecLatency>> {
    same_model(path, model, &profile.model, &profile.weights_hash)?;
    let precisions = qualities_of(path, qualities)?;
    let threads = tch::get_num_threads();
    tch::set_num_threads(profile.threads);
    let rows = latency::codec_rows(
        model,
        &[x.shallow_clone()],
        &precisions,
        profile.runs,
        || (),
    );
    tch::set_num_threads(threads);
    let rows = rows?;
    profile
        .codecs
        .retain(|r| !(r.split == 0 && r.precision.is_jpeg()));
    profile.codecs.extend(rows.iter().cloned());
    Ok(rows)
}
