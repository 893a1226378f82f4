//! Where dyno finds what `scripts/setup.sh` fetched: weights, data, libtorch.
//!
//! The project folder is `$DYNO_HOME` when set, otherwise the source folder the binary
//! was built from (so `cargo run` and `target/release/dyno` work from any directory).
use std::path::{Path, PathBuf};

/// The command that fetches weights and data; named in every "missing" error.
pub const SETUP_COMMAND: &str = "scripts/setup.sh";

/// The project folder and the well-known paths inside it.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `$DYNO_HOME`, or the folder this crate was built from.
    pub fn discover() -> Self {
        match std::env::var_os("DYNO_HOME") {
            Some(dir) if !dir.is_empty() => Home::at(dir),
            _ => Home::at(env!("CARGO_MANIFEST_DIR")),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Home { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Weights shipped in git (small, trained by the project).
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Weights fetched and converted by set-up (git-ignored).
    pub fn weights_dir(&self) -> PathBuf {
        self.root.join("models").join("weights")
    }

    /// The 20 labeled ImageNet images (pip foolbox==3.3.4).
    pub fn imagenet_dir(&self) -> PathBuf {
        self.root.join("data").join("imagenet")
    }

    /// The 1,000 labeled ImageNet images, one per class, shipped in the repository
    /// (its README gives their source, terms and caveats).
    pub fn imagenet_1k_dir(&self) -> PathBuf {
        self.root.join("data").join("imagenet-1k-sample")
    }

    /// The official Fashion-MNIST, gunzipped (Debian dataset-fashion-mnist).
    pub fn fashion_mnist_dir(&self) -> PathBuf {
        self.root.join("data").join("fashion-mnist")
    }
}
