//! # dyno
//!
//! dyno runs CNN inference for a fleet of devices that share cloud capacity, by
//! *dynamic onloading* (DynO, Almeida et al., ACM TECS 2022): each device runs the
//! head of the network up to a split point, sends the activation there, and a cloud
//! worker runs the tail.
//!
//! The crate, one idea per module (see `docs/ARCHITECTURE.md` for the full map):
//!
//! - [`model`]: CNNs as ordered lists of blocks; `head(x, s)`, `tail(a, s)` and the full
//!   forward for every split point `s`. The built-in architectures (`mobilenet_v2`,
//!   `resnet50`, `vgg16`, `inception_v3`, `fashion_cnn`) and user TorchScript packages.
//! - [`pack`]: the packed tensor format: quantisation to 1..=16 bits, bit shuffling,
//!   LZ4/zstd, a checked self-describing header.
//! - [`profile`]: profiles the scheduler reads: the precision-sensitivity (accuracy)
//!   profile and the latency profile.
//! - [`sched`]: the performance model, SLOs, the bandwidth estimator, the scheduler
//!   (DynO and the baselines) and fleet planning. Pure: plain data in and out.
//! - [`config`]: device classes and the cloud, from TOML.
//! - [`experiment`]: TOML experiments; the simulated mode (a discrete-event run on the
//!   profiles, with the coordinator's own control loop, `sched::control`).
//! - [`link`]: user-space link emulation: bandwidth traces, a token bucket, delay, loss.
//! - [`wire`]: the wire protocol and session layer: framed bincode messages, the
//!   authenticated handshake, dialling, the writer pump, the accept loop.
//! - [`plot`]: pictures (the accuracy-drop heat map).
//! - [`data`]: real inputs: image files preprocessed as torchvision does, Fashion-MNIST.
//! - [`check`]: `dyno models check`: accuracy on real data, split exactness, block times.
//! - [`train`]: trains `fashion_cnn` with a fixed seed.
//! - [`home`]: where set-up put weights and data.
//! - [`error`]: the typed errors, each naming the problem and the fix.
//! - [`stats`]: the percentile of a sample, as every table reports it.
//!
//! The command line is the `dyno` binary's (`dyno_actors::cli`); this library has none.
//!
//! Every tensor computation goes through libtorch (the `tch` crate).

pub mod check;
pub mod config;
pub mod data;
pub mod error;
pub mod experiment;
pub mod home;
pub mod link;
pub mod model;
pub mod pack;
pub mod plot;
pub mod profile;
pub mod sched;
pub mod stats;
pub mod train;
pub mod wire;

pub use error::{Error, Result};
pub use model::Model;
