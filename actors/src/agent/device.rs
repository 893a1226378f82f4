//! The **Device** actor: the device's compute thread (a `SyncArbiter` of one) with its
//! model, its packer and its input source. It runs heads and packing, and tails when the
//! cloud cannot; each stage is stretched to the device class's slowdown (on the testbed,
//! where the host's quota makes it slow, not stretched, its quota is kept spent while it
//! waits).
use std::time::{Duration, Instant};

use actix::prelude::*;
use dyno::model::Model;
use dyno::pack::tensor::tensor_values;
use dyno::pack::{PackOptions, Packer, TensorId};
use dyno::sched::perf::Candidate;
use tch::{Kind, Tensor};

use crate::testbed::cgroup::KeepBusy;

/// Why the Device could not do a stage.
#[derive(Debug, thiserror::Error)]
pub(super) enum DeviceError {
    #[error("the device's model did not load: {0}")]
    NoModel(String),
    #[error(transparent)]
    Dyno(#[from] dyno::Error),
}

impl From<dyno::pack::PackError> for DeviceError {
    fn from(e: dyno::pack::PackError) -> Self {
        DeviceError::Dyno(e.into())
    }
}

/// One frame's input (for a frame that needs it before its head: `--verify`).
#[derive(Message)]
#[rtype(result = "Result<Tensor, DeviceError>")]
pub(super) struct NextInput;

/// Runs the head to `split` and packs the activation (nothing to pack at device-only),
/// on `x` or, without one, on the next input: one message, so that a frame waits for the
/// compute thread once (under a testbed quota, each wait may be a period).
#[derive(Message)]
#[rtype(result = "Result<HeadOut, DeviceError>")]
pub(super) struct Head {
    pub x: Option<Tensor>,
    pub candidate: Candidate,
    /// When it was sent: its wait for the compute thread is measured there.
    pub sent: Instant,
}

pub(super) struct HeadOut {
    pub activation: Tensor,
    pub packed: Vec<u8>,
    /// At device-only, the answer.
    pub top1: Option<i64>,
    /// Its wait for the compute thread (busy, or its quota spent), seconds.
    pub wait_s: f64,
    pub head_s: f64,
    pub pack_s: f64,
}

/// Finishes a frame on the device.
#[derive(Message)]
#[rtype(result = "Result<(i64, f64), DeviceError>")]
pub(super) struct Tail {
    pub activation: Tensor,
    pub split: u16,
}

/// The whole model, for `verify`.
#[derive(Message)]
#[rtype(result = "Result<i64, DeviceError>")]
pub(super) struct Full {
    pub x: Tensor,
}

/// The Device actor: its own thread (a SyncArbiter of one) with its model, its packer and
/// its input source; runs heads, packing, and tails when the cloud cannot.
pub(super) struct Device {
    /// The model, or why it did not load.
    pub model: Result<Model, String>,
    pub packer: Packer,
    pub slowdown: f64,
    pub source: Inputs,
    /// This machine's profile of the model: a stage is made to last `slowdown` times its
    /// profiled time, whatever else runs on this machine meanwhile (without one, `slowdown`
    /// times what the work took).
    pub reference: Option<dyno::profile::latency::LatencyProfile>,
    /// On the testbed, the spinner that keeps the device's quota spent while this thread
    /// waits (`testbed::cgroup::KeepBusy`): each handler marks its work.
    pub busy: Option<KeepBusy>,
}

pub(super) enum Inputs {
    Images(Vec<Tensor>, usize),
    Synthetic(u64, u64, Vec<i64>),
}

impl Inputs {
    fn next(&mut self) -> Tensor {
        match self {
            Inputs::Images(v, i) => {
                let x = v[*i % v.len()].shallow_clone();
                *i += 1;
                x
            }
            Inputs::Synthetic(seed, i, shape) => {
                let n: i64 = shape.iter().product();
                let phase = (*seed as f64) * 0.37 + (*i as f64) * 0.11;
                *i += 1;
                (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.013 + phase)
                    .sin()
                    .view(shape.as_slice())
            }
        }
    }
}

impl Actor for Device {
    type Context = SyncContext<Self>;
}

impl Device {
    /// Makes a stage that took `took` last `slowdown` times its reference time (its
    /// profiled time, or what it took); returns how long it lasted.
    fn emulate(&self, took: Duration, reference: Option<f64>) -> f64 {
        let took_s = took.as_secs_f64();
        let target = self.slowdown * reference.unwrap_or(took_s);
        if target > took_s {
            std::thread::sleep(Duration::from_secs_f64(target - took_s));
        }
        target.max(took_s)
    }

    fn head_ref(&self, split: usize) -> Option<f64> {
        let p = self.reference.as_ref()?;
        Some(p.blocks.get(..split)?.iter().map(|b| b.seconds).sum())
    }

    fn tail_ref(&self, split: usize) -> Option<f64> {
        let p = self.reference.as_ref()?;
        Some(p.blocks.get(split..)?.iter().map(|b| b.seconds).sum())
    }

    fn pack_ref(&self, c: &Candidate) -> Option<f64> {
        let p = self.reference.as_ref()?;
        p.codecs
            .iter()
            .find(|r| {
                r.split == c.split as usize && r.precision == c.precision && r.codec == c.codec
            })
            .map(|r| r.pack_s)
    }
}

impl Handler<NextInput> for Device {
    type Result = Result<Tensor, DeviceError>;
    fn handle(&mut self, _: NextInput, _: &mut Self::Context) -> Self::Result {
        let _working = self.busy.as_ref().map(KeepBusy::work);
        Ok(self.source.next())
    }
}

impl Handler<Head> for Device {
    type Result = Result<HeadOut, DeviceError>;
    fn handle(&mut self, m: Head, _: &mut Self::Context) -> Self::Result {
        let wait_s = m.sent.elapsed().as_secs_f64();
        let _working = self.busy.as_ref().map(KeepBusy::work);
        let c = m.candidate;
        let model = self
            .model
            .as_ref()
            .map_err(|e| DeviceError::NoModel(e.clone()))?;
        let x = m.x.unwrap_or_else(|| self.source.next());
        let t = Instant::now();
        let a = model.head(&x, c.split as usize)?;
        let head_s = self.emulate(t.elapsed(), self.head_ref(c.split as usize));
        if c.split as usize == model.num_blocks() {
            let top1 = a.argmax(-1, false).int64_value(&[0]);
            return Ok(HeadOut {
                activation: a,
                packed: Vec::new(),
                top1: Some(top1),
                wait_s,
                head_s,
                pack_s: 0.0,
            });
        }
        let t = Instant::now();
        let (values, shape) = tensor_values(&a)?;
        let id = TensorId {
            model: model.name(),
            weights_hash: model.weights_hash(),
            split: c.split,
        };
        let mut packed = Vec::new();
        self.packer.pack_into(
            &values,
            &shape,
            &id,
            &PackOptions::new(c.precision, c.codec),
            &mut packed,
        )?;
        let pack_s = self.emulate(t.elapsed(), self.pack_ref(&c));
        Ok(HeadOut {
            activation: a,
            packed,
            top1: None,
            wait_s,
            head_s,
            pack_s,
        })
    }
}

impl Handler<Tail> for Device {
    type Result = Result<(i64, f64), DeviceError>;
    fn handle(&mut self, m: Tail, _: &mut Self::Context) -> Self::Result {
        let _working = self.busy.as_ref().map(KeepBusy::work);
        let model = self
            .model
            .as_ref()
            .map_err(|e| DeviceError::NoModel(e.clone()))?;
        let t = Instant::now();
        let y = model.tail(&m.activation, m.split as usize)?;
        let top1 = y.argmax(-1, false).int64_value(&[0]);
        Ok((
            top1,
            self.emulate(t.elapsed(), self.tail_ref(m.split as usize)),
        ))
    }
}

impl Handler<Full> for Device {
    type Result = Result<i64, DeviceError>;
    fn handle(&mut self, m: Full, _: &mut Self::Context) -> Self::Result {
        let _working = self.busy.as_ref().map(KeepBusy::work);
        let model = self
            .model
            .as_ref()
            .map_err(|e| DeviceError::NoModel(e.clone()))?;
        let y = model.forward(&m.x)?;
        Ok(y.argmax(-1, false).int64_value(&[0]))
    }
}
