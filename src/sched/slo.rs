//! Service level objectives: hard constraints and ordered objectives, from TOML.
//!
//! ```toml
//! [constraints]             # all optional
//! max_latency_ms = 200.0
//! min_throughput_fps = 5.0
//! max_accuracy_drop = 1.0   # points
//! max_cloud_ms = 50.0       # cloud seconds per inference, in ms
//! max_bytes = 100000        # bytes sent per inference
//! max_energy_mj = 500.0     # device energy per inference, millijoules
//!
//! [objectives]
//! order = ["max-throughput", "min-cloud-cost"]
//! tolerance = 0.05          # relative: within 5 % of the best counts as a tie
//! hysteresis = 0.10         # a new plan must be 10 % better to replace the current one
//! ```
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::perf::Prediction;

/// What to optimise, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    MaxThroughput,
    MinLatency,
    MinCloudCost,
    MinBytes,
    MinAccuracyDrop,
    MinEnergy,
}

impl Objective {
    pub const ALL: [Objective; 6] = [
        Objective::MaxThroughput,
        Objective::MinLatency,
        Objective::MinCloudCost,
        Objective::MinBytes,
        Objective::MinAccuracyDrop,
        Objective::MinEnergy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Objective::MaxThroughput => "max-throughput",
            Objective::MinLatency => "min-latency",
            Objective::MinCloudCost => "min-cloud-cost",
            Objective::MinBytes => "min-bytes",
            Objective::MinAccuracyDrop => "min-accuracy-drop",
            Objective::MinEnergy => "min-energy",
        }
    }

    /// The figure, signed so that larger is better.
    #[inline]
    pub fn score(self, p: &Prediction) -> f64 {
        match self {
            Objective::MaxThroughput => p.throughput,
            Objective::MinLatency => -p.latency_s,
            Objective::MinCloudCost => -p.cloud_s,
            Objective::MinBytes => -p.bytes,
            Objective::MinAccuracyDrop => -p.drop_points,
            Objective::MinEnergy => -p.energy_j,
        }
    }

    /// The figure in the units a person reads.
    pub fn describe(self, p: &Prediction) -> String {
        match self {
            Objective::MaxThroughput => format!("{:.2} inferences/s", p.throughput),
            Objective::MinLatency => format!("{:.2} ms latency", p.latency_s * 1e3),
            Objective::MinCloudCost => format!("{:.2} cloud ms/inference", p.cloud_s * 1e3),
            Objective::MinBytes => format!("{:.0} bytes", p.bytes),
            Objective::MinAccuracyDrop => format!("{:.2} points drop", p.drop_points),
            Objective::MinEnergy => format!("{:.2} mJ", p.energy_j * 1e3),
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hard limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    pub max_latency_ms: Option<f64>,
    pub min_throughput_fps: Option<f64>,
    pub max_accuracy_drop: Option<f64>,
    pub max_cloud_ms: Option<f64>,
    pub max_bytes: Option<f64>,
    pub max_energy_mj: Option<f64>,
}

/// One broken constraint: its key, the limit and the predicted figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Violation {
    pub key: &'static str,
    pub limit: f64,
    pub value: f64,
}

impl Violation {
    /// How far past the limit, relative to it (0 at the limit).
    pub fn excess(&self) -> f64 {
        if self.key.starts_with("min_") {
            if self.value <= 0.0 {
                f64::INFINITY
            } else {
                self.limit / self.value - 1.0
            }
        } else if self.limit <= 0.0 {
            if self.value > 0.0 {
                f64::INFINITY
            } else {
                0.0
            }
        } else {
            self.value / self.limit - 1.0
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.key.starts_with("min_") {
            "<"
        } else {
            ">"
        };
        write!(f, "{} {:.3} {op} {}", self.key, self.value, self.limit)
    }
}

/// Whether `value` keeps a limit (none: always); NaN keeps none.
#[inline]
fn keeps(value: f64, limit: Option<f64>, is_max: bool) -> bool {
    match limit {
        None => true,
        Some(m) if is_max => value <= m,
        Some(m) => value >= m,
    }
}

impl Constraints {
    /// The figures of `p` in each constraint's unit, with its key, its limit and whether
    /// the limit is a maximum; the cheap, model-only figures first.
    #[inline]
    fn checks(&self, p: &Prediction) -> [(&'static str, Option<f64>, f64, bool); 6] {
        [
            (
                "max_accuracy_drop",
                self.max_accuracy_drop,
                p.drop_points,
                true,
            ),
            ("max_bytes", self.max_bytes, p.bytes, true),
            (
                "max_latency_ms",
                self.max_latency_ms,
                p.latency_s * 1e3,
                true,
            ),
            (
                "min_throughput_fps",
                self.min_throughput_fps,
                p.throughput,
                false,
            ),
            ("max_cloud_ms", self.max_cloud_ms, p.cloud_s * 1e3, true),
            ("max_energy_mj", self.max_energy_mj, p.energy_j * 1e3, true),
        ]
    }

    /// True when `p` keeps every constraint.
    #[inline]
    pub fn allows(&self, p: &Prediction) -> bool {
        self.checks(p)
            .iter()
            .all(|&(_, limit, value, is_max)| keeps(value, limit, is_max))
    }

    /// Every constraint `p` breaks.
    pub fn violations(&self, p: &Prediction) -> Vec<Violation> {
        self.checks(p)
            .into_iter()
            .filter(|&(_, limit, value, is_max)| !keeps(value, limit, is_max))
            .map(|(key, limit, value, _)| Violation {
                key,
                limit: limit.expect("only set limits can be broken"),
                value,
            })
            .collect()
    }

    /// The summed relative excess over every broken constraint (0 when all are kept).
    pub fn total_excess(&self, p: &Prediction) -> f64 {
        self.violations(p).iter().map(Violation::excess).sum()
    }
}

/// The ordered objectives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objectives {
    pub order: Vec<Objective>,
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    #[serde(default = "default_hysteresis")]
    pub hysteresis: f64,
}

fn default_tolerance() -> f64 {
    0.02
}

fn default_hysteresis() -> f64 {
    0.10
}

impl Default for Objectives {
    fn default() -> Self {
        Objectives {
            order: vec![Objective::MaxThroughput, Objective::MinCloudCost],
            tolerance: default_tolerance(),
            hysteresis: default_hysteresis(),
        }
    }
}

/// A device's service level objectives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    #[serde(default)]
    pub constraints: Constraints,
    #[serde(default)]
    pub objectives: Objectives,
}

impl Default for Slo {
    /// Throughput first, then the least cloud time, within one point of accuracy.
    fn default() -> Self {
        Slo {
            constraints: Constraints {
                max_accuracy_drop: Some(1.0),
                ..Constraints::default()
            },
            objectives: Objectives::default(),
        }
    }
}

/// A bad SLO: the key, what is wrong, the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SloError(pub String);

impl Slo {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Slo, SloError> {
        let slo: Slo = toml::from_str(text).map_err(|e| {
            SloError(format!(
                "{}; the keys are [constraints] {} and [objectives] order, tolerance, \
                 hysteresis (see config/README.md)",
                e.to_string().trim_end(),
                CONSTRAINT_KEYS.join(", ")
            ))
        })?;
        slo.validate()?;
        Ok(slo)
    }

    pub fn load(path: &Path) -> Result<Slo, SloError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SloError(format!("SLO file {}: {e}", path.display())))?;
        Slo::from_toml(&text).map_err(|e| SloError(format!("SLO file {}: {}", path.display(), e.0)))
    }

    /// Checks every value; the error names the key and the allowed values.
    pub fn validate(&self) -> Result<(), SloError> {
        let c = &self.constraints;
        for (key, v, zero_ok) in [
            ("max_latency_ms", c.max_latency_ms, false),
            ("min_throughput_fps", c.min_throughput_fps, true),
            ("max_accuracy_drop", c.max_accuracy_drop, true),
            ("max_cloud_ms", c.max_cloud_ms, true),
            ("max_bytes", c.max_bytes, true),
            ("max_energy_mj", c.max_energy_mj, false),
        ] {
            if let Some(v) = v {
                let ok = v.is_finite() && if zero_ok { v >= 0.0 } else { v > 0.0 };
                if !ok {
                    let allowed = if zero_ok {
                        "a finite number >= 0"
                    } else {
                        "a finite number > 0"
                    };
                    return Err(SloError(format!(
                        "constraints.{key} = {v} is not allowed: give {allowed}, or leave the \
                         key out for no limit"
                    )));
                }
            }
        }
        let o = &self.objectives;
        if o.order.is_empty() {
            return Err(SloError(format!(
                "objectives.order is empty: list at least one of {}",
                objective_names()
            )));
        }
        for (i, a) in o.order.iter().enumerate() {
            if o.order[..i].contains(a) {
                return Err(SloError(format!(
                    "objectives.order names `{a}` twice: each objective at most once"
                )));
            }
        }
        for (key, v) in [("tolerance", o.tolerance), ("hysteresis", o.hysteresis)] {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err(SloError(format!(
                    "objectives.{key} = {v} is not allowed: give a fraction in [0, 1), \
                     e.g. 0.05 for 5 %"
                )));
            }
        }
        Ok(())
    }
}

const CONSTRAINT_KEYS: [&str; 6] = [
    "max_latency_ms",
    "min_throughput_fps",
    "max_accuracy_drop",
    "max_cloud_ms",
    "max_bytes",
    "max_energy_mj",
];

fn objective_names() -> String {
    Objective::ALL
        .iter()
        .map(|o| o.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let slo = Slo::from_toml(
            r#"
            [constraints]
            max_latency_ms = 200
            min_throughput_fps = 5.5
            max_accuracy_drop = 1
            [objectives]
            order = ["max-throughput", "min-energy"]
            tolerance = 0.05
            "#,
        )
        .unwrap();
        assert_eq!(slo.constraints.max_latency_ms, Some(200.0));
        assert_eq!(
            slo.objectives.order,
            [Objective::MaxThroughput, Objective::MinEnergy]
        );
        assert_eq!(slo.objectives.hysteresis, 0.10);
    }

    #[test]
    fn violations_name_the_key_and_the_excess() {
        let c = Constraints {
            max_latency_ms: Some(100.0),
            min_throughput_fps: Some(10.0),
            ..Constraints::default()
        };
        let p = Prediction {
            latency_s: 0.150,
            throughput: 5.0,
            ..Prediction::default()
        };
        assert!(!c.allows(&p));
        let v = c.violations(&p);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].key, "max_latency_ms");
        assert!((v[0].excess() - 0.5).abs() < 1e-9);
        assert!((v[1].excess() - 1.0).abs() < 1e-9);
        assert!((c.total_excess(&p) - 1.5).abs() < 1e-9);
        let nan = Prediction {
            latency_s: f64::NAN,
            throughput: 20.0,
            ..Prediction::default()
        };
        assert!(!c.allows(&nan));
    }
}
