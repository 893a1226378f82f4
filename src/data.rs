//! Inputs: images from files, preprocessed as a model's [`InputSpec`] says, and the
//! official Fashion-MNIST test set.
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::InputSpec;

/// An image file and, when its name ends in `_<number>`, its class label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledImage {
    pub path: PathBuf,
    pub label: Option<i64>,
}

/// The JPEG and PNG files of a folder, sorted by name, with labels from their names
/// (`imagenet_07_438.jpg` has label 438).
pub fn list_images(dir: &Path) -> Result<Vec<LabeledImage>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
            continue;
        }
        let label = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('_').next())
            .and_then(|s| s.parse::<i64>().ok());
        out.push(LabeledImage { path, label });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    if out.is_empty() {
        return Err(Error::Dataset {
            path: dir.to_path_buf(),
            reason: "the folder holds no .jpg, .jpeg or .png file".into(),
        });
    }
    Ok(out)
}

/// Decodes an image file and preprocesses it into a `[C, H, W]` fp32 tensor:
/// resize (short side to `spec.resize`, bilinear with antialiasing, as PIL does),
/// centre crop to `H x W`, scale to [0, 1], subtract `mean`, divide by `std`.
pub fn load_image(path: &Path, spec: &InputSpec) -> Result<Tensor> {
    preprocess(&decode_image(path, spec)?, spec, View::default(), path)
}

/// Where a crop is taken from the resized image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Anchor {
    #[default]
    Center,
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

/// One deterministic view of an image: a scale, a crop position, a mirror.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// Short side before the crop (default: the spec's `resize`).
    pub resize: Option<i64>,
    pub anchor: Anchor,
    pub flip: bool,
}

/// Decodes an image into a `[1, C, H, W]` fp32 tensor of 0..=255 pixel values.
pub fn decode_image(path: &Path, spec: &InputSpec) -> Result<Tensor> {
    let bad = |reason: String| Error::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = image::load_from_memory(&bytes).map_err(|e| bad(e.to_string()))?;
    let c = spec.shape[0];
    let (raw, iw, ih) = match c {
        1 => {
            let g = img.to_luma8();
            (g.as_raw().clone(), g.width(), g.height())
        }
        3 => {
            let rgb = img.to_rgb8();
            (rgb.as_raw().clone(), rgb.width(), rgb.height())
        }
        _ => {
            return Err(bad(format!(
                "the model takes {c} channels; images give 1 or 3"
            )))
        }
    };
    let (iw, ih) = (i64::from(iw), i64::from(ih));
    Ok(Tensor::from_slice(&raw)
        .view([ih, iw, c])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        .unsqueeze(0))
}

/// Resizes, crops, mirrors and normalises a decoded image (`path` names it in errors).
pub fn preprocess(x: &Tensor, spec: &InputSpec, view: View, path: &Path) -> Result<Tensor> {
    Ok(normalize(crop(x, spec, view, path)? / 255.0, spec))
}

/// Resizes, crops and mirrors a decoded image: `[C, H, W]` pixels of 0..=255.
fn crop(x: &Tensor, spec: &InputSpec, view: View, path: &Path) -> Result<Tensor> {
    let [_, h, w] = spec.shape;
    let (ih, iw) = (x.size()[2], x.size()[3]);
    let (nh, nw) = match view.resize.or(spec.resize) {
        Some(r) if ih <= iw => (r, r * iw / ih),
        Some(r) => (r * ih / iw, r),
        None => (h, w),
    };
    let x = if (nh, nw) != (ih, iw) {
        // PIL resizes 8-bit images: round and clamp the same way.
        x.f_internal_upsample_bilinear2d_aa([nh, nw], false, None, None)?
            .round()
            .clamp(0.0, 255.0)
    } else {
        x.shallow_clone()
    };
    if nh < h || nw < w {
        return Err(Error::BadImage {
            path: path.to_path_buf(),
            reason: format!(
                "resized to {nh}x{nw}, smaller than the {h}x{w} crop; the model's resize must be at \
                 least its crop"
            ),
        });
    }
    let centre = |free: i64| (free as f64 / 2.0).round_ties_even() as i64;
    let (top, left) = match view.anchor {
        Anchor::Center => (centre(nh - h), centre(nw - w)),
        Anchor::TopLeft => (0, 0),
        Anchor::TopRight => (0, nw - w),
        Anchor::BottomLeft => (nh - h, 0),
        Anchor::BottomRight => (nh - h, nw - w),
    };
    let mut x = x.narrow(2, top, h).narrow(3, left, w).squeeze_dim(0);
    if view.flip {
        x = x.flip([2]);
    }
    Ok(x)
}

fn normalize(x: Tensor, spec: &InputSpec) -> Tensor {
    let c = spec.shape[0];
    let mut x = x;
    if !spec.mean.is_empty() {
        x -= Tensor::from_slice(&spec.mean)
            .to_kind(Kind::Float)
            .view([c, 1, 1]);
    }
    if !spec.std.is_empty() {
        x /= Tensor::from_slice(&spec.std)
            .to_kind(Kind::Float)
            .view([c, 1, 1]);
    }
    x
}

/// Loads and stacks images into one `[N, C, H, W]` batch.
pub fn load_batch(images: &[LabeledImage], spec: &InputSpec) -> Result<Tensor> {
    let xs = images
        .iter()
        .map(|i| load_image(&i.path, spec))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&xs, 0))
}

/// Fashion-MNIST as `[N, 1, 28, 28]` fp32 in [0, 1] and int64 labels.
pub struct FashionMnist {
    pub train_images: Tensor,
    pub train_labels: Tensor,
    pub test_images: Tensor,
    pub test_labels: Tensor,
}

/// Reads the official Fashion-MNIST IDX files (gunzipped by set-up) from `dir`.
pub fn fashion_mnist(dir: &Path) -> Result<FashionMnist> {
    let d = tch::vision::mnist::load_dir(dir).map_err(|e| Error::Dataset {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let shape = |t: Tensor| t.view([-1, 1, 28, 28]);
    Ok(FashionMnist {
        train_images: shape(d.train_images),
        train_labels: d.train_labels,
        test_images: shape(d.test_images),
        test_labels: d.test_labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_last_number_in_the_name() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["imagenet_07_438.jpg", "b.PNG", "notes.txt", "a_12.jpeg"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let got: Vec<(String, Option<i64>)> = list_images(dir.path())
            .unwrap()
            .into_iter()
            .map(|i| {
                (
                    i.path.file_name().unwrap().to_string_lossy().into_owned(),
                    i.label,
                )
            })
            .collect();
        let want = [
            ("a_12.jpeg", Some(12)),
            ("b.PNG", None),
            ("imagenet_07_438.jpg", Some(438)),
        ];
        let want: Vec<(String, Option<i64>)> =
            want.iter().map(|(f, l)| (f.to_string(), *l)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn preprocessing_resizes_crops_and_normalises() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grey.png");
        // A uniform mid-grey 40x80 image: every output pixel is (128/255 - mean) / std.
        image::GrayImage::from_pixel(80, 40, image::Luma([128u8]))
            .save(&path)
            .unwrap();
        let spec = InputSpec {
            shape: [3, 16, 16],
            resize: Some(20),
            mean: vec![0.5, 0.4, 0.3],
            std: vec![0.5, 0.5, 0.25],
        };
        let x = load_image(&path, &spec).unwrap();
        assert_eq!(x.size(), [3, 16, 16]);
        for (c, (m, s)) in spec.mean.iter().zip(&spec.std).enumerate() {
            let want = (128.0 / 255.0 - m) / s;
            let got = x.get(c as i64).mean(Kind::Double).double_value(&[]);
            assert!((got - want).abs() < 1e-5, "channel {c}: {got} vs {want}");
        }
    }
}
