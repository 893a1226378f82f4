//! Configuration files read by the scheduler side: device classes and the cloud.
//!
//! ```toml
//! [classes.slow5x]
//! slowdown = 5.0        # compute time over the measured latency profile's
//! threads = 2           # libtorch threads the agent uses
//! description = "an ARM gateway"
//! # profile = "models/profiles/{model}.latency.json"   # default: the model's profile
//! [classes.slow5x.energy]
//! compute_watts = 4.0
//! radio_joules_per_mb = 0.8
//!
//! [cloud]
//! slowdown = 1.0        # the cloud's compute time over its profile's
//! workers = 2           # pool capacity: cloud seconds per second
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::sched::perf::EnergyModel;

/// A bad configuration file: where, which key, the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A class of devices: how much slower than the profiled machine, how many threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceClass {
    pub slowdown: f64,
    #[serde(default = "one")]
    pub threads: u32,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub energy: EnergyModel,
    /// Latency profile to scale (`{model}` is replaced by the model name); default: the
    /// model's own.
    #[serde(default)]
    pub profile: Option<String>,
}

fn one() -> u32 {
    1
}

/// The cloud pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudClass {
    #[serde(default = "unit")]
    pub slowdown: f64,
    /// Workers in the pool, each serving one inference at a time.
    #[serde(default = "one")]
    pub workers: u32,
    #[serde(default)]
    pub profile: Option<String>,
}

fn unit() -> f64 {
    1.0
}

impl Default for CloudClass {
    fn default() -> Self {
        CloudClass {
            slowdown: 1.0,
            workers: 1,
            profile: None,
        }
    }
}

/// A device-classes file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// The devices' latency profile, which each class's slowdown scales (`{model}` is
    /// replaced by the model name); default: the model's own
    /// (`models/profiles/{model}.latency.json`, measured with 2 threads).
    #[serde(default)]
    pub profile: Option<String>,
    pub classes: BTreeMap<String, DeviceClass>,
    #[serde(default)]
    pub cloud: CloudClass,
}

fn check_positive(key: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{key} = {v} is not allowed: give a finite number > 0"
        )))
    }
}

fn check_non_negative(key: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{key} = {v} is not allowed: give a finite number >= 0"
        )))
    }
}

impl Devices {
    pub fn from_toml(text: &str) -> Result<Devices, ConfigError> {
        let d: Devices = toml::from_str(text).map_err(|e| {
            ConfigError(format!(
                "{}; the file has profile, [classes.NAME] and [cloud]; a class has \
                 slowdown, threads, description, energy (compute_watts, \
                 radio_joules_per_mb) and profile; [cloud] has slowdown, workers and \
                 profile (see config/README.md)",
                e.to_string().trim_end()
            ))
        })?;
        d.validate()?;
        Ok(d)
    }

    pub fn load(path: &Path) -> Result<Devices, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("device classes {}: {e}", path.display())))?;
        Devices::from_toml(&text)
            .map_err(|e| ConfigError(format!("device classes {}: {}", path.display(), e.0)))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.classes.is_empty() {
            return Err(ConfigError(
                "no [classes.NAME] table: define at least one device class".into(),
            ));
        }
        for (name, c) in &self.classes {
            check_positive(&format!("classes.{name}.slowdown"), c.slowdown)?;
            if c.threads == 0 {
                return Err(ConfigError(format!(
                    "classes.{name}.threads = 0 is not allowed: give at least 1"
                )));
            }
            check_non_negative(
                &format!("classes.{name}.energy.compute_watts"),
                c.energy.compute_watts,
            )?;
            check_non_negative(
                &format!("classes.{name}.energy.radio_joules_per_mb"),
                c.energy.radio_joules_per_mb,
            )?;
        }
        check_positive("cloud.slowdown", self.cloud.slowdown)?;
        Ok(())
    }

    /// The class called `name`; the error lists the known ones.
    pub fn class(&self, name: &str) -> Result<&DeviceClass, ConfigError> {
        self.classes.get(name).ok_or_else(|| {
            ConfigError(format!(
                "unknown device class `{name}`: the classes are {}",
                self.classes.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The shipped `config/devices.toml`.
    pub fn default_path(home: &Home) -> PathBuf {
        home.root().join("config").join("devices.toml")
    }
}

impl Devices {
    /// `model`'s tables (a built-in's name or a package's folder): its accuracy profile,
    /// the devices' latency profile (`profile`) and the cloud's (`[cloud] profile`,
    /// default the model's own). A missing one is named with the command that makes it.
    pub fn tables(&self, home: &Home, model: &str) -> anyhow::Result<crate::sched::perf::Tables> {
        use crate::profile::{self, latency::LatencyProfile, AccuracyProfile};
        let need = |path: PathBuf, purpose: &str, kind: &str| -> anyhow::Result<PathBuf> {
            if path.exists() {
                return Ok(path);
            }
            Err(profile::missing(&path, purpose, &profile::command_for(model, kind)).into())
        };
        let accuracy = need(
            profile::find(home, model, "accuracy"),
            "accuracy profile (what each split and precision costs in accuracy and bytes)",
            "accuracy",
        )?;
        let device = need(
            self.device_profile(home, model),
            "latency profile of the devices (what the device classes' slowdowns scale)",
            &template_kind(self.profile.as_deref()),
        )?;
        let cloud = need(
            self.cloud_profile(home, model),
            "latency profile of the cloud workers (their tail times)",
            &template_kind(self.cloud.profile.as_deref()),
        )?;
        let accuracy = AccuracyProfile::load(&accuracy)?;
        let device = LatencyProfile::load(&device)?;
        let cloud = LatencyProfile::load(&cloud)?;
        Ok(crate::sched::perf::Tables::new(&accuracy, &device, &cloud)?)
    }

    /// The devices' latency profile of `model` (what the classes' slowdowns scale).
    pub fn device_profile(&self, home: &Home, model: &str) -> PathBuf {
        latency_profile_path(self.profile.as_deref(), home, model)
    }

    /// The cloud's latency profile of `model` (`[cloud] profile`, default the model's own):
    /// its tail times and batch curve.
    pub fn cloud_profile(&self, home: &Home, model: &str) -> PathBuf {
        latency_profile_path(self.cloud.profile.as_deref(), home, model)
    }

    /// The device-classes file `path` names (relative to the project), or the shipped one.
    pub fn load_or_default(path: Option<&Path>, home: &Home) -> Result<Devices, ConfigError> {
        Devices::load(&path.map_or_else(|| Devices::default_path(home), |p| home.root().join(p)))
    }
}

/// A profile path from a class's `profile` template, or the model's default. `{model}`
/// stands for the model's name ([`crate::profile::model_name`]: a package's manifest
/// name, never its path); a template in `models/profiles/` is looked for in
/// `out/profiles/` first, like every default profile ([`crate::profile::find_file`]).
pub fn latency_profile_path(template: Option<&str>, home: &Home, model: &str) -> PathBuf {
    let name = crate::profile::model_name(model);
    match template {
        Some(t) => {
            let t = t.replace("{model}", &name);
            match Path::new(&t).strip_prefix("models/profiles") {
                Ok(file) if file.components().count() == 1 => {
                    crate::profile::find_file(home, &file.to_string_lossy())
                }
                _ => home.root().join(t),
            }
        }
        None => crate::profile::find(home, &name, "latency"),
    }
}

/// The kind of profile a `profile` template names (`latency-1thread` in
/// `models/profiles/{model}.latency-1thread.json`), for the command that makes it.
pub fn template_kind(template: Option<&str>) -> String {
    template
        .and_then(|t| t.rsplit('/').next())
        .and_then(|f| f.strip_prefix("{model}."))
        .and_then(|f| f.strip_suffix(".json"))
        .unwrap_or("latency")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_parse_with_defaults() {
        let d = Devices::from_toml("[classes.a]\nslowdown = 2.5\n[cloud]\nworkers = 3\n").unwrap();
        let a = d.class("a").unwrap();
        assert_eq!((a.slowdown, a.threads), (2.5, 1));
        assert_eq!(a.energy, EnergyModel::default());
        assert_eq!(d.cloud.workers, 3);
        let e = d.class("b").unwrap_err().0;
        assert!(
            e.contains("unknown device class `b`") && e.contains("a"),
            "{e}"
        );
    }
}
