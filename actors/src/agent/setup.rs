//! An agent's set-up: the device class, the model, the link, the SLO and the inputs,
//! checked before anything runs.
use dyno::config::Devices;
use dyno::data;
use dyno::home::Home;
use dyno::link::Shaper;
use dyno::model::{zoo, Model};
use dyno::sched::slo::Slo;

use super::device::Inputs;
use crate::config::{AgentConfig, Source};

/// The link configuration, the device class and the model, checked before anything runs.
pub(super) struct Setup {
    pub model: Model,
    pub reference: Option<dyno::profile::latency::LatencyProfile>,
    pub slowdown: f64,
    /// The slowdown it tells the coordinator (`declares`' class's, or its own).
    pub declared_slowdown: f64,
    pub threads: u32,
    pub class: String,
    pub shaper: Shaper,
    pub slo: Slo,
    pub source: Inputs,
}

pub(super) fn setup(cfg: &AgentConfig, home: &Home) -> anyhow::Result<Setup> {
    cfg.check()?;
    let devices_path = cfg
        .devices
        .clone()
        .unwrap_or_else(|| Devices::default_path(home));
    let (mut slowdown, mut threads) = (1.0, 1);
    if cfg.slowdown.is_none() || cfg.threads.is_none() {
        let devices = Devices::load(&devices_path)?;
        let c = devices.class(&cfg.class)?;
        (slowdown, threads) = (c.slowdown, c.threads);
    }
    let slowdown = cfg.slowdown.unwrap_or(slowdown);
    let threads = cfg.threads.unwrap_or(threads);
    anyhow::ensure!(
        slowdown.is_finite() && slowdown >= 1.0,
        "slowdown = {slowdown}: an agent emulates a device at least as slow as this machine (>= 1)"
    );
    anyhow::ensure!(threads >= 1, "threads = 0: give at least 1");
    let declared_slowdown = match &cfg.declares {
        Some(class) => Devices::load(&devices_path)?.class(class)?.slowdown,
        None => slowdown,
    };
    let model = zoo::load(&cfg.model, home)?;
    // What the class's slowdown scales: its own profile, else the file's devices' one.
    let reference_path = match Devices::load(&devices_path) {
        Ok(d) => match d.classes.get(&cfg.class).and_then(|c| c.profile.clone()) {
            Some(t) => dyno::config::latency_profile_path(Some(&t), home, &cfg.model),
            None => d.device_profile(home, &cfg.model),
        },
        Err(_) => dyno::profile::find(home, &cfg.model, "latency"),
    };
    let reference = match dyno::profile::latency::LatencyProfile::load(&reference_path) {
        Ok(p) if p.model == model.name() && p.blocks.len() == model.num_blocks() => Some(p),
        Ok(_) | Err(_) => {
            tracing::warn!(
                profile = %reference_path.display(),
                "no usable latency profile: the device's slowdown applies to what each stage takes"
            );
            None
        }
    };
    let shaper = Shaper::new(
        cfg.link.trace()?,
        cfg.link.rtt_ms / 1e3,
        cfg.link.loss,
        cfg.link.seed,
    )?;
    // Checked here, before anything connects: the coordinator would refuse it.
    let slo = match &cfg.slo {
        Some(p) => Slo::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Slo::default(),
    };
    let source = match &cfg.source {
        Source::Folder { path } => {
            let images = data::list_images(path)?;
            anyhow::ensure!(!images.is_empty(), "no images in {}", path.display());
            let xs = images
                .iter()
                .map(|i| data::load_image(&i.path, model.input()).map(|x| x.unsqueeze(0)))
                .collect::<Result<Vec<_>, _>>()?;
            Inputs::Images(xs, 0)
        }
        Source::FashionMnist => {
            let d = data::fashion_mnist(&home.fashion_mnist_dir())?;
            let n = d.test_images.size()[0].min(2000);
            let xs = (0..n).map(|i| d.test_images.narrow(0, i, 1)).collect();
            Inputs::Images(xs, 0)
        }
        Source::Synthetic { seed } => {
            let mut shape = vec![1];
            shape.extend(model.input().shape.iter().copied());
            Inputs::Synthetic(*seed, 0, shape)
        }
    };
    Ok(Setup {
        model,
        reference,
        slowdown,
        declared_slowdown,
        threads,
        class: cfg.class.clone(),
        shaper,
        slo,
        source,
    })
}
