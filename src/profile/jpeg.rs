//! What a camera sends: the model's input as a JPEG at a few qualities, with its bytes
//! and its accuracy cost measured like any precision of the profile (the same images,
//! the same paired interval). It is the cloud-only baseline a user would really run.
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::accuracy::Half;
use super::save_json;
use crate::check::predict;
use crate::data;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::model::Model;
use crate::stats;

/// Version of the JPEG profile's file format.
pub const JPEG_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JpegProfile {
    pub format: u32,
    pub model: String,
    pub weights_hash: String,
    pub data: String,
    pub inputs: usize,
    /// Top-1 of the model on the images as decoded from their files (no JPEG made here).
    pub baseline_accuracy: f64,
    /// Bytes of the input in fp32 (what cloud-only sent before).
    pub fp32_bytes: u64,
    /// Mean bytes of the image files as stored (the sample's JPEGs, short side 256).
    pub stored_file_bytes: f64,
    pub entries: Vec<JpegEntry>,
}

/// One quality: the input resized and cropped to the model's size, then encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JpegEntry {
    pub quality: u8,
    pub mean_bytes: f64,
    pub accuracy: f64,
    /// Points of top-1 lost against the images as decoded from their files.
    pub drop_points: f64,
    /// Agresti and Min's paired 95 % interval (`stats::paired_drop_ci95`).
    pub drop_ci95: [f64; 2],
}

impl JpegProfile {
    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(self, path)
    }

    pub fn load(path: &Path) -> Result<JpegProfile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Profile {
            path: path.to_path_buf(),
            reason: format!("not a JPEG profile: {e}; write one with `dyno profile jpeg`"),
        })
    }

    /// The entry of `quality`, if measured.
    pub fn at(&self, quality: u8) -> Option<&JpegEntry> {
        self.entries.iter().find(|e| e.quality == quality)
    }
}

/// Measures each quality on one half of the 1,000-image sample.
pub fn profile(
    model: &Model,
    home: &Home,
    half: Half,
    qualities: &[u8],
    batch: usize,
) -> Result<JpegProfile> {
    let spec = model.input();
    let images = half.images(home)?;
    let labels: Vec<i64> = images.iter().filter_map(|i| i.label).collect();
    let n = images.len();
    let xs = data::load_batch(&images, spec)?;
    let batch = batch.max(1) as i64;
    let base = predict(model, &xs, batch)?;
    let base_right: Vec<bool> = base.iter().zip(&labels).map(|(p, l)| p == l).collect();
    let mut stored = 0u64;
    for i in &images {
        stored += std::fs::metadata(&i.path)
            .map_err(|e| Error::io(&i.path, e))?
            .len();
    }
    let mut entries = Vec::new();
    for &q in qualities {
        let mut bytes = 0usize;
        let mut decoded = Vec::with_capacity(n);
        for i in &images {
            let jpeg = data::camera_jpeg(&i.path, spec, q)?;
            bytes += jpeg.len();
            decoded.push(data::from_camera_jpeg(&jpeg, spec, &i.path)?);
        }
        let preds = predict(model, &Tensor::stack(&decoded, 0), batch)?;
        let (mut right, mut lost, mut gained) = (0, 0, 0);
        for ((p, l), was) in preds.iter().zip(&labels).zip(&base_right) {
            let is = p == l;
            right += usize::from(is);
            lost += usize::from(*was && !is);
            gained += usize::from(!*was && is);
        }
        let base_n = base_right.iter().filter(|r| **r).count();
        entries.push(JpegEntry {
            quality: q,
            mean_bytes: bytes as f64 / n as f64,
            accuracy: right as f64 / n as f64,
            drop_points: 100.0 * (base_n as f64 - right as f64) / n as f64,
            drop_ci95: stats::paired_drop_ci95(lost, gained, n),
        });
    }
    Ok(JpegProfile {
        format: JPEG_FORMAT,
        model: model.name().to_string(),
        weights_hash: format!("{:016x}", model.weights_hash()),
        data: format!(
            "{n} labeled ImageNet images, the {} of {}",
            half.name(),
            home.imagenet_1k_dir().display()
        ),
        inputs: n,
        baseline_accuracy: base_right.iter().filter(|r| **r).count() as f64 / n as f64,
        fp32_bytes: 4 * spec.shape.iter().product::<i64>() as u64,
        stored_file_bytes: stored as f64 / n as f64,
        entries,
    })
}
