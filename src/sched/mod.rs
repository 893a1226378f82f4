//! The scheduler: per device, the (split, precision, codec) that best meets its SLO, and
//! per fleet, plans that fit a finite cloud pool. Pure: plain data in, plain data out.
//!
//! - [`perf`]: the performance model (latency, throughput, cloud cost, bytes, accuracy
//!   drop, energy) and the tables it reads from the profiles.
//! - [`slo`]: constraints and ordered objectives, from TOML.
//! - [`bandwidth`]: bandwidth and RTT estimates from real transfers.
//! - [`fleet`]: planning many devices against one cloud pool.
//!
//! A decision enumerates every candidate the policy admits, drops those that break a
//! constraint, and solves the objectives lexicographically: the candidates within
//! `tolerance` of the best on the first objective go on to the second, and so on; the
//! best on the last wins. A current plan is kept unless the winner beats it by more than
//! `hysteresis` on the first objective where they differ beyond the tolerance, or it
//! breaks a constraint. When nothing is feasible, the least-violating candidate is
//! returned, marked infeasible.
use std::fmt;

use serde::{Deserialize, Serialize};

pub mod bandwidth;
pub mod batch;
pub mod control;
pub mod fleet;
pub mod perf;
pub mod slo;

use perf::{Candidate, Conditions, Prediction, Tables};
use slo::{Objective, Slo, Violation};

use crate::pack::Precision;

/// A planning policy: DynO and the baselines, all planned by the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Everything on the device.
    DeviceOnly,
    /// Everything in the cloud: the input sent as a camera would, a JPEG (any quality
    /// the profile has), or lossless (fp32, any codec) where the profiles have no JPEG.
    CloudOnly,
    /// Neurosurgeon: the latency-optimal split, fp32 transfer without compression.
    Neurosurgeon,
    /// The best split at 8 bits (a JALAD/SPINN-style system).
    #[serde(rename = "fixed-8bit")]
    Fixed8Bit,
    /// DynO: every split, precision and codec, against the SLO's objectives.
    Dyno,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::DeviceOnly,
        Policy::CloudOnly,
        Policy::Neurosurgeon,
        Policy::Fixed8Bit,
        Policy::Dyno,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::DeviceOnly => "device-only",
            Policy::CloudOnly => "cloud-only",
            Policy::Neurosurgeon => "neurosurgeon",
            Policy::Fixed8Bit => "fixed-8bit",
            Policy::Dyno => "dyno",
        }
    }

    /// Whether this policy may choose `c` from `tables`.
    #[inline]
    pub fn admits(self, c: &Candidate, tables: &Tables) -> bool {
        let device_only = c.split as usize == tables.blocks;
        match self {
            Policy::DeviceOnly => device_only,
            Policy::CloudOnly if tables.jpeg => c.split == 0 && c.precision.is_jpeg(),
            Policy::CloudOnly => c.split == 0 && c.precision == Precision::Fp32,
            Policy::Neurosurgeon => {
                device_only
                    || (c.precision == Precision::Fp32 && c.codec == crate::pack::Codec::None)
            }
            Policy::Fixed8Bit => device_only || c.precision == Precision::Bits(8),
            Policy::Dyno => true,
        }
    }

    /// The objectives this policy optimises: Neurosurgeon's own (latency), else the SLO's.
    pub fn objectives(self, slo: &Slo) -> &[Objective] {
        match self {
            Policy::Neurosurgeon => &[Objective::MinLatency],
            _ => &slo.objectives.order,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown policy `{s}`: the policies are {}",
                    Policy::ALL.map(Policy::name).join(", ")
                )
            })
    }
}

/// A plan and what it is predicted to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub candidate: Candidate,
    pub prediction: Prediction,
    /// False when no admitted candidate keeps every constraint: this is the least
    /// violating one.
    pub feasible: bool,
    /// The constraints it breaks (empty when feasible).
    pub violations: Vec<Violation>,
    /// True when the current plan was kept (hysteresis).
    pub kept_current: bool,
}

/// A candidate that lost, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerUp {
    pub candidate: Candidate,
    pub prediction: Prediction,
    pub reason: String,
}

/// A decision with the runners-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub decision: Decision,
    /// Candidates the policy admitted, and how many of them were feasible.
    pub admitted: usize,
    pub feasible: usize,
    pub runners_up: Vec<RunnerUp>,
}

/// Makes decisions, reusing its scratch space between calls.
#[derive(Debug, Default, Clone)]
pub struct Scheduler {
    preds: Vec<Prediction>,
    alive: Vec<u32>,
}

/// Keeps the `alive` indices whose score on `o` is within `tol` of the best; returns the
/// best score.
fn narrow(alive: &mut Vec<u32>, preds: &[Prediction], o: Objective, tol: f64) -> f64 {
    let best = alive
        .iter()
        .map(|&i| o.score(&preds[i as usize]))
        .fold(f64::NEG_INFINITY, f64::max);
    let floor = if best.is_finite() {
        best - tol * best.abs()
    } else {
        best
    };
    alive.retain(|&i| o.score(&preds[i as usize]) >= floor);
    best
}

/// The first of `alive` with the best score on `o`.
fn argbest(alive: &[u32], preds: &[Prediction], o: Objective) -> u32 {
    let mut best = alive[0];
    let mut score = o.score(&preds[best as usize]);
    for &i in &alive[1..] {
        let s = o.score(&preds[i as usize]);
        if s > score {
            best = i;
            score = s;
        }
    }
    best
}

/// Relative gain of `new` over `cur` on a larger-is-better score.
fn gain(new: f64, cur: f64) -> f64 {
    if new == cur {
        return 0.0;
    }
    let scale = cur.abs().max(1e-12);
    (new - cur) / scale
}

impl Scheduler {
    pub fn new() -> Scheduler {
        Scheduler::default()
    }

    /// Predicts every admitted row into `preds` (others get a default) and collects the
    /// feasible ones into `alive`; returns how many were admitted.
    fn evaluate(&mut self, tables: &Tables, cond: &Conditions, slo: &Slo, policy: Policy) -> usize {
        self.preds.clear();
        self.alive.clear();
        let mut admitted = 0;
        for (i, row) in tables.rows.iter().enumerate() {
            if !policy.admits(&row.candidate, tables) {
                self.preds.push(Prediction::default());
                continue;
            }
            admitted += 1;
            let p = row.predict(cond);
            if slo.constraints.allows(&p) {
                self.alive.push(i as u32);
            }
            self.preds.push(p);
        }
        admitted
    }

    /// The least violating admitted row.
    fn least_violating(&self, tables: &Tables, slo: &Slo, policy: Policy) -> u32 {
        let first = policy.objectives(slo)[0];
        let mut best: Option<(u32, f64, f64)> = None;
        for (i, row) in tables.rows.iter().enumerate() {
            if !policy.admits(&row.candidate, tables) {
                continue;
            }
            let p = &self.preds[i];
            let excess = slo.constraints.total_excess(p);
            let score = first.score(p);
            let better = match best {
                None => true,
                Some((_, e, s)) => excess < e || (excess == e && score > s),
            };
            if better {
                best = Some((i as u32, excess, score));
            }
        }
        best.map(|b| b.0)
            .expect("every policy admits at least one row of complete tables")
    }

    /// Chooses a plan. `current` is the plan in force, if any (for hysteresis).
    pub fn decide(
        &mut self,
        tables: &Tables,
        cond: &Conditions,
        slo: &Slo,
        policy: Policy,
        current: Option<Candidate>,
    ) -> Decision {
        self.evaluate(tables, cond, slo, policy);
        let objectives = policy.objectives(slo);
        if self.alive.is_empty() {
            let i = self.least_violating(tables, slo, policy) as usize;
            let p = self.preds[i];
            return Decision {
                candidate: tables.rows[i].candidate,
                prediction: p,
                feasible: false,
                violations: slo.constraints.violations(&p),
                kept_current: false,
            };
        }
        let tol = slo.objectives.tolerance;
        let (last, rest) = objectives.split_last().expect("validated: at least one");
        for &o in rest {
            narrow(&mut self.alive, &self.preds, o, tol);
        }
        let chosen = argbest(&self.alive, &self.preds, *last) as usize;
        let mut decision = Decision {
            candidate: tables.rows[chosen].candidate,
            prediction: self.preds[chosen],
            feasible: true,
            violations: Vec::new(),
            kept_current: false,
        };
        if let Some(cur) = current.filter(|c| *c != decision.candidate) {
            if let Some(ci) = tables.rows.iter().position(|r| r.candidate == cur) {
                let cp = self.preds[ci];
                if policy.admits(&cur, tables)
                    && slo.constraints.allows(&cp)
                    && !self.worth_switching(objectives, slo, &decision.prediction, &cp)
                {
                    decision.candidate = cur;
                    decision.prediction = cp;
                    decision.kept_current = true;
                }
            }
        }
        decision
    }

    /// Whether `new` beats `cur` by more than the hysteresis margin.
    fn worth_switching(
        &self,
        objectives: &[Objective],
        slo: &Slo,
        new: &Prediction,
        cur: &Prediction,
    ) -> bool {
        for &o in objectives {
            let g = gain(o.score(new), o.score(cur));
            if g > slo.objectives.hysteresis {
                return true;
            }
            if g < -slo.objectives.tolerance {
                return false;
            }
        }
        false
    }

    /// Like [`Scheduler::decide`] without a current plan, with the `n` best runners-up
    /// and the reason each lost.
    pub fn explain(
        &mut self,
        tables: &Tables,
        cond: &Conditions,
        slo: &Slo,
        policy: Policy,
        n: usize,
    ) -> Explanation {
        let decision = self.decide(tables, cond, slo, policy, None);
        let admitted = self.evaluate(tables, cond, slo, policy);
        let feasible = self.alive.len();
        let objectives = policy.objectives(slo);
        // Fate of each admitted row: (stage reached, score there, reason).
        let mut fates: Vec<(usize, f64, u32, String)> = Vec::new();
        for (i, row) in tables.rows.iter().enumerate() {
            if !policy.admits(&row.candidate, tables) || row.candidate == decision.candidate {
                continue;
            }
            let p = &self.preds[i];
            let v = slo.constraints.violations(p);
            if !v.is_empty() {
                let reason = format!(
                    "breaks {}",
                    v.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                fates.push((0, -slo.constraints.total_excess(p), i as u32, reason));
            }
        }
        let tol = slo.objectives.tolerance;
        let mut alive = self.alive.clone();
        for (stage, &o) in objectives.iter().enumerate() {
            let is_last = stage + 1 == objectives.len();
            let best = narrow(&mut alive.clone(), &self.preds, o, tol);
            let floor = if best.is_finite() {
                best - tol * best.abs()
            } else {
                best
            };
            let chosen = decision.prediction;
            for &i in &alive {
                let p = &self.preds[i as usize];
                if tables.rows[i as usize].candidate == decision.candidate {
                    continue;
                }
                let s = o.score(p);
                if s < floor || is_last {
                    let how = if s < floor {
                        "worse beyond the tolerance"
                    } else {
                        "within the tolerance of the earlier objectives, not the best"
                    };
                    fates.push((
                        stage + 1,
                        s,
                        i,
                        format!(
                            "lost on {o}: {} against {} ({how})",
                            o.describe(p),
                            o.describe(&chosen)
                        ),
                    ));
                }
            }
            alive.retain(|&i| o.score(&self.preds[i as usize]) >= floor);
        }
        fates.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
        let runners_up = fates
            .into_iter()
            .take(n)
            .map(|(_, _, i, reason)| RunnerUp {
                candidate: tables.rows[i as usize].candidate,
                prediction: self.preds[i as usize],
                reason,
            })
            .collect();
        Explanation {
            decision,
            admitted,
            feasible,
            runners_up,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::perf::{Link, Row};
    use super::*;
    use crate::pack::Codec;

    /// A toy model of 4 blocks: early splits send a lot, late ones little; bits cost
    /// accuracy below 4.
    pub(crate) fn toy() -> Tables {
        let block = [0.010, 0.010, 0.010, 0.010];
        let fp32 = [600_000.0, 400_000.0, 100_000.0, 20_000.0];
        let mut rows = Vec::new();
        for s in 0..4usize {
            let head: f64 = block[..s].iter().sum();
            let tail: f64 = block[s..].iter().sum();
            for prec in Precision::all() {
                let (bits, drop) = match prec {
                    Precision::Bits(b) => (b as f64, if b < 4 { 5.0 / b as f64 } else { 0.2 }),
                    Precision::Fp16 => (16.0, 0.0),
                    Precision::Fp32 => (32.0, 0.0),
                    Precision::Jpeg(_) => (8.0, 0.5),
                };
                for codec in Codec::ALL {
                    let ratio = match codec {
                        Codec::None => 1.0,
                        Codec::Lz4 => 0.7,
                        Codec::Zstd => 0.6,
                    };
                    let codec_cost = match codec {
                        Codec::None => 1.0,
                        Codec::Lz4 => 1.5,
                        Codec::Zstd => 3.0,
                    };
                    rows.push(Row {
                        candidate: Candidate {
                            split: s as u16,
                            precision: prec,
                            codec,
                        },
                        head_s: head,
                        tail_s: tail,
                        pack_s: 1e-9 * fp32[s] * codec_cost,
                        unpack_s: 1e-9 * fp32[s] * codec_cost,
                        bytes: 64.0 + fp32[s] * bits / 32.0 * ratio,
                        drop_points: drop,
                        batch: 1.0,
                        batch_wait_s: 0.0,
                    });
                }
            }
        }
        rows.push(Row {
            candidate: Candidate {
                split: 4,
                precision: Precision::Fp32,
                codec: Codec::None,
            },
            head_s: block.iter().sum(),
            tail_s: 0.0,
            pack_s: 0.0,
            unpack_s: 0.0,
            bytes: 0.0,
            drop_points: 0.0,
            batch: 1.0,
            batch_wait_s: 0.0,
        });
        Tables {
            model: "toy".into(),
            blocks: 4,
            batch_ratios: Vec::new(),
            jpeg: false,
            rows,
        }
    }

    /// [`toy`] whose input can also be sent as a JPEG of quality 90: 30 kB, 0.5 points.
    pub(crate) fn toy_with_jpeg() -> Tables {
        let mut t = toy();
        let mut jpeg = *t
            .row(&Candidate {
                split: 0,
                precision: Precision::Fp32,
                codec: Codec::None,
            })
            .expect("the toy sends fp32 at split 0");
        jpeg.candidate.precision = Precision::Jpeg(90);
        (jpeg.bytes, jpeg.drop_points) = (30_000.0, 0.5);
        t.rows.insert(0, jpeg);
        t.jpeg = true;
        t
    }

    #[test]
    fn cloud_only_sends_a_jpeg_where_the_profiles_have_one() {
        let t = toy_with_jpeg();
        let c = Conditions::new(2.0, Link::mbps(20.0, 5.0));
        let mut s = Scheduler::new();
        let co = s.decide(&t, &c, &Slo::default(), Policy::CloudOnly, None);
        assert_eq!(
            (co.candidate.split, co.candidate.precision),
            (0, Precision::Jpeg(90))
        );
        assert_eq!(co.prediction.bytes, 30_000.0);
        // Without the JPEG rows, the lossless input.
        let co = s.decide(&toy(), &c, &Slo::default(), Policy::CloudOnly, None);
        assert_eq!(co.candidate.precision, Precision::Fp32);
    }

    fn throughput_slo() -> Slo {
        Slo::from_toml(
            "[constraints]\nmax_accuracy_drop = 1.0\n[objectives]\norder = [\"max-throughput\"]\ntolerance = 0.0\n",
        )
        .unwrap()
    }

    #[test]
    fn split_is_monotone_in_bandwidth_for_a_slow_device() {
        let t = toy();
        let slo = throughput_slo();
        let mut s = Scheduler::new();
        let mut last = 0;
        for mbps in [1000.0, 300.0, 100.0, 30.0, 10.0, 3.0, 1.0, 0.5] {
            let d = s.decide(
                &t,
                &Conditions::new(10.0, Link::mbps(mbps, 10.0)),
                &slo,
                Policy::Dyno,
                None,
            );
            assert!(d.feasible);
            assert!(d.prediction.drop_points <= 1.0);
            assert!(
                d.candidate.split >= last,
                "{mbps} Mbit/s: {:?}",
                d.candidate
            );
            last = d.candidate.split;
        }
        let gone = s.decide(
            &t,
            &Conditions::new(10.0, Link::gone()),
            &slo,
            Policy::Dyno,
            None,
        );
        assert_eq!(gone.candidate.split, 4);
    }

    #[test]
    fn policies_keep_to_their_candidates() {
        let t = toy();
        let slo = Slo::default();
        let c = Conditions::new(2.0, Link::mbps(20.0, 5.0));
        let mut s = Scheduler::new();
        let d = |s: &mut Scheduler, p| s.decide(&t, &c, &slo, p, None).candidate;
        assert_eq!(d(&mut s, Policy::DeviceOnly).split, 4);
        let co = d(&mut s, Policy::CloudOnly);
        assert_eq!((co.split, co.precision), (0, Precision::Fp32));
        let ns = d(&mut s, Policy::Neurosurgeon);
        assert!(ns.split == 4 || (ns.precision == Precision::Fp32 && ns.codec == Codec::None));
        let f8 = d(&mut s, Policy::Fixed8Bit);
        assert!(f8.split == 4 || f8.precision == Precision::Bits(8));
        // Neurosurgeon's split is latency-optimal among fp32 plans.
        let best_latency = t
            .rows
            .iter()
            .filter(|r| Policy::Neurosurgeon.admits(&r.candidate, &t))
            .map(|r| r.predict(&c).latency_s)
            .fold(f64::INFINITY, f64::min);
        let ns_latency = t.row(&ns).unwrap().predict(&c).latency_s;
        assert_eq!(ns_latency, best_latency);
        // DynO is at least as fast as every baseline under the same SLO.
        let thr = |cand: Candidate| t.row(&cand).unwrap().predict(&c).throughput;
        let dyno = thr(d(&mut s, Policy::Dyno));
        for p in [
            Policy::DeviceOnly,
            Policy::CloudOnly,
            Policy::Neurosurgeon,
            Policy::Fixed8Bit,
        ] {
            assert!(dyno >= thr(d(&mut s, p)), "{p}");
        }
    }

    #[test]
    fn lexicographic_objectives_use_the_tolerance() {
        let t = toy();
        let c = Conditions::new(1.0, Link::mbps(50.0, 5.0));
        let mut s = Scheduler::new();
        let strict = Slo::from_toml(
            "[objectives]\norder=[\"max-throughput\",\"min-bytes\"]\ntolerance=0.0\n",
        )
        .unwrap();
        let loose = Slo::from_toml(
            "[objectives]\norder=[\"max-throughput\",\"min-bytes\"]\ntolerance=0.5\n",
        )
        .unwrap();
        let a = s.decide(&t, &c, &strict, Policy::Dyno, None);
        let b = s.decide(&t, &c, &loose, Policy::Dyno, None);
        assert!(b.prediction.bytes < a.prediction.bytes);
        assert!(b.prediction.throughput >= 0.5 * a.prediction.throughput);
        assert!(b.prediction.throughput <= a.prediction.throughput);
    }

    #[test]
    fn hysteresis_keeps_a_plan_until_a_real_gain() {
        let t = toy();
        let slo = throughput_slo();
        let mut s = Scheduler::new();
        let at = |mbps| Conditions::new(10.0, Link::mbps(mbps, 10.0));
        // Find where a fresh decision changes as bandwidth falls in 1 % steps.
        let mut mbps = 1000.0;
        let mut prev = s.decide(&t, &at(mbps), &slo, Policy::Dyno, None);
        let mut boundaries = 0;
        while mbps > 0.2 {
            mbps *= 0.99;
            let fresh = s.decide(&t, &at(mbps), &slo, Policy::Dyno, None);
            if fresh.candidate != prev.candidate {
                // Just past the boundary, the plan in force stays: the gain is small.
                let next = s.decide(&t, &at(mbps), &slo, Policy::Dyno, Some(prev.candidate));
                assert_eq!(next.candidate, prev.candidate, "at {mbps} Mbit/s");
                assert!(next.kept_current);
                boundaries += 1;
            }
            prev = fresh;
        }
        assert!(boundaries >= 2, "{boundaries} plan changes over the sweep");
        let first = s.decide(&t, &at(1000.0), &slo, Policy::Dyno, None);
        // A large one: it moves, and says so.
        let moved = s.decide(&t, &at(0.3), &slo, Policy::Dyno, Some(first.candidate));
        assert_ne!(moved.candidate, first.candidate);
        assert!(!moved.kept_current);
        // A current plan that breaks a constraint is always replaced.
        let bad = Candidate {
            split: 0,
            precision: Precision::Bits(1),
            codec: Codec::None,
        };
        let fixed = s.decide(&t, &at(10.0), &slo, Policy::Dyno, Some(bad));
        assert_ne!(fixed.candidate, bad);
    }

    #[test]
    fn nothing_feasible_gives_the_least_violating_marked() {
        let t = toy();
        let slo = Slo::from_toml("[constraints]\nmax_latency_ms = 1\n").unwrap();
        let mut s = Scheduler::new();
        let d = s.decide(
            &t,
            &Conditions::new(1.0, Link::mbps(10.0, 50.0)),
            &slo,
            Policy::Dyno,
            None,
        );
        assert!(!d.feasible);
        assert_eq!(d.violations[0].key, "max_latency_ms");
        // Device-only at 40 ms is the least late of all.
        assert_eq!(d.candidate.split, 4);
    }

    #[test]
    fn explanations_give_a_reason_per_runner_up() {
        let t = toy();
        let slo = Slo::default();
        let mut s = Scheduler::new();
        let e = s.explain(
            &t,
            &Conditions::new(5.0, Link::mbps(5.0, 20.0)),
            &slo,
            Policy::Dyno,
            8,
        );
        assert_eq!(e.admitted, t.rows.len());
        assert!(e.feasible > 0 && e.feasible < e.admitted);
        assert_eq!(e.runners_up.len(), 8);
        for r in &e.runners_up {
            assert_ne!(r.candidate, e.decision.candidate);
            assert!(
                r.reason.starts_with("lost on") || r.reason.starts_with("breaks"),
                "{}",
                r.reason
            );
        }
        // Each lost on the objective it names.
        let d = e.decision.prediction;
        for r in &e.runners_up {
            if r.reason.starts_with("lost on max-throughput") {
                assert!(r.prediction.throughput < d.throughput);
            } else if r.reason.starts_with("lost on min-cloud-cost") {
                assert!(r.prediction.cloud_s >= d.cloud_s);
            }
        }
    }
}
