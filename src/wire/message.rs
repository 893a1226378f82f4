//! What travels: every [`Message`], and its bincode 2 encoding (serde) with a size limit
//! checked before anything is allocated.
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{WireError, FRAME_LIMIT};
use crate::sched::perf::Candidate;
use crate::sched::slo::Slo;
use crate::sched::Policy;

/// Who is connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Agent,
    Worker,
    Coordinator,
    /// `dyno status` and other read-only clients.
    Observer,
}

/// Stage times of one frame, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Stages {
    pub head_s: f64,
    pub pack_s: f64,
    /// From the first byte sent to the answer, minus the worker's own time.
    pub wire_s: f64,
    /// Of which the emulated link's share (uplink serialisation, delay and loss, and the
    /// downlink delay): the network a real link would add.
    pub link_s: f64,
    pub queue_s: f64,
    pub unpack_s: f64,
    /// The tail of the batch the frame ran in (the whole batch's time: the frame waited
    /// for all of it).
    pub tail_s: f64,
    /// Frames in that batch (0: it did not onload).
    pub batch: u32,
}

impl Stages {
    pub fn total(&self) -> f64 {
        self.head_s + self.pack_s + self.wire_s + self.queue_s + self.unpack_s + self.tail_s
    }
}

/// What a device tells the coordinator about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: String,
    pub model: String,
    pub class: String,
    pub slowdown: f64,
    pub threads: u32,
    pub slo: Slo,
    pub policy: Policy,
    /// Frames it has out at once (the performance model's window).
    pub in_flight: u32,
}

/// A plan the coordinator assigns to a device (its worker: the address to send
/// activations to).
pub use crate::sched::control::Plan as Assignment;

/// One finished frame, as the device reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameReport {
    pub request: u64,
    pub candidate: Candidate,
    pub stages: Stages,
    /// Bytes sent and the seconds from the first byte to the answer (for bandwidth).
    pub bytes: u64,
    pub transfer_s: f64,
    /// True when the frame ran device-only because the cloud failed.
    pub fallback: bool,
    /// True when its plan onloads but the frame ran device-only: the device's onload
    /// budget (`Assignment::rate_fps`) was spent.
    pub over_budget: bool,
}

/// A snapshot of the fleet (`dyno status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub devices: Vec<DeviceStatus>,
    pub workers: Vec<WorkerStatus>,
    pub plans_sent: u64,
    /// The planned cloud load over the pool's slots.
    pub pool_utilisation: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub id: String,
    pub class: String,
    pub plan: Option<Assignment>,
    pub bandwidth_mbps: f64,
    pub rtt_ms: f64,
    pub frames: u64,
    pub fallbacks: u64,
    /// Frames its plan would have onloaded, run on the device over its budget.
    pub over_budget: u64,
    /// Frames it onloaded over the coordinator's recent window, per second: what its
    /// budget (`plan.rate_fps`) bounds.
    pub onload_fps: f64,
    /// Its head and pack time measured over the profiled (the control step's `k_dev`).
    pub k_dev: f64,
    /// Frames reported over the coordinator's recent window, per second.
    pub fps: f64,
    /// End-to-end latency of those frames, ms (NaN before any).
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    /// How often this id registered since the coordinator started (1 unless it
    /// reconnected).
    pub registrations: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    pub data_addr: String,
    pub slots: u32,
    pub queued: u32,
    /// Its service time measured over the profiled (the control step's `k_cloud`).
    pub k_cloud: f64,
    /// The queue wait the control step plans with, ms.
    pub queue_ms: f64,
    /// Frames it answered busy because their device was over its onload budget.
    pub over_budget: u64,
}

/// A device's onload budget on a worker, frames per second (infinite: none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceBudget {
    pub device: String,
    pub rate_fps: f64,
}

/// Everything that travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    // The handshake.
    Hello {
        version: u16,
        role: Role,
        fleet: String,
        name: String,
        insecure: bool,
    },
    /// A Noise handshake message (`noise.rs`).
    Handshake {
        #[serde(with = "serde_bytes")]
        noise: Vec<u8>,
    },
    /// The client's first encrypted message: it holds this session's keys.
    Confirm,
    Welcome,
    Refused {
        reason: String,
    },
    // Liveness.
    Heartbeat {
        seq: u64,
    },
    HeartbeatAck {
        seq: u64,
    },
    // Agent and coordinator.
    RegisterDevice(DeviceInfo),
    Plan(Assignment),
    Report(FrameReport),
    /// An active probe of the uplink (padding of the size to time).
    Probe {
        seq: u64,
        #[serde(with = "serde_bytes")]
        padding: Vec<u8>,
    },
    ProbeAck {
        seq: u64,
    },
    /// The coordinator asks for a probe of an idle uplink (`sched::control::ProbeRule`).
    ProbeRequest {
        bytes: u32,
    },
    /// A link sample measured by the device: bytes and seconds including one RTT
    /// (bytes 0: a round-trip time sample).
    LinkSample {
        bytes: u64,
        seconds: f64,
    },
    // Worker and coordinator.
    RegisterWorker {
        name: String,
        data_addr: String,
        slots: u32,
        models: Vec<String>,
        /// How it batches: the planner counts each split at the batch it expects.
        batching: crate::sched::batch::Batching,
    },
    WorkerLoad {
        queued: u32,
        slots: u32,
        /// Frames it answered busy because their device was over its onload budget,
        /// since it started.
        over_budget: u64,
    },
    /// The coordinator tells a worker the onload budget of every device planned onto it
    /// (the whole list: a device not in it has none there), so that its admission
    /// agrees with the plans.
    Budgets(Vec<DeviceBudget>),
    // Agent and worker: the data path.
    Infer {
        request: u64,
        device: String,
        #[serde(with = "serde_bytes")]
        packed: Vec<u8>,
    },
    InferOk {
        request: u64,
        top1: i64,
        queue_s: f64,
        unpack_s: f64,
        /// The tail of the whole batch the frame ran in.
        tail_s: f64,
        /// Frames in that batch.
        batch: u32,
    },
    InferErr {
        request: u64,
        /// True when the worker's queue was full: try elsewhere.
        busy: bool,
        reason: String,
    },
    // An observer (`dyno status`) and the coordinator.
    StatusRequest,
    /// The fleet's state.
    Status(FleetStatus),
}

impl Message {
    /// The variant's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Handshake { .. } => "Handshake",
            Message::Confirm => "Confirm",
            Message::Welcome => "Welcome",
            Message::Refused { .. } => "Refused",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::HeartbeatAck { .. } => "HeartbeatAck",
            Message::RegisterDevice(_) => "RegisterDevice",
            Message::Plan(_) => "Plan",
            Message::Report(_) => "Report",
            Message::Probe { .. } => "Probe",
            Message::ProbeAck { .. } => "ProbeAck",
            Message::ProbeRequest { .. } => "ProbeRequest",
            Message::LinkSample { .. } => "LinkSample",
            Message::RegisterWorker { .. } => "RegisterWorker",
            Message::WorkerLoad { .. } => "WorkerLoad",
            Message::Budgets(_) => "Budgets",
            Message::Infer { .. } => "Infer",
            Message::InferOk { .. } => "InferOk",
            Message::InferErr { .. } => "InferErr",
            Message::StatusRequest => "StatusRequest",
            Message::Status(_) => "Status",
        }
    }
}

fn config() -> impl bincode::config::Config {
    // Without a limit bincode allocates what a length field claims before reading it:
    // 11 bytes of garbage claiming a 2^60-byte string panicked (found by fuzz/wire).
    bincode::config::standard().with_limit::<FRAME_LIMIT>()
}

/// Encodes one message.
pub fn encode(m: &Message) -> Bytes {
    Bytes::from(bincode::serde::encode_to_vec(m, config()).expect("every message encodes"))
}

/// Decodes one frame's payload; anything else than exactly one message is garbage.
pub fn decode(buf: &[u8]) -> Result<Message, WireError> {
    let (m, used): (Message, usize) = bincode::serde::decode_from_slice(buf, config())
        .map_err(|e| WireError::Garbage(e.to_string()))?;
    if used != buf.len() {
        return Err(WireError::Garbage(format!(
            "{} bytes left over after a {}",
            buf.len() - used,
            m.kind()
        )));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte vectors (an activation, a probe's padding, a handshake message) are one
    /// slice on the wire: their length, then their bytes, as serde's byte-by-byte
    /// sequence wrote them before (so the protocol did not change), and a length over
    /// [`FRAME_LIMIT`] is refused before anything is allocated.
    #[test]
    fn a_byte_vector_is_its_length_then_its_bytes_and_a_claim_past_the_limit_is_refused() {
        let infer = |packed: Vec<u8>| Message::Infer {
            request: 7,
            device: "cam".into(),
            packed,
        };
        let empty = encode(&infer(vec![])).to_vec();
        let three = encode(&infer(vec![1, 2, 3])).to_vec();
        assert_eq!(empty.last(), Some(&0), "an empty vector is its length, 0");
        assert_eq!(three[..empty.len() - 1], empty[..empty.len() - 1]);
        assert_eq!(three[empty.len() - 1..], [3, 1, 2, 3]);
        let big = infer((0..100_000u32).map(|i| i as u8).collect());
        assert_eq!(decode(&encode(&big)).unwrap(), big);
        // varint: 0xfd, then a u64 claiming one byte past the limit.
        let mut claim = empty[..empty.len() - 1].to_vec();
        claim.push(0xfd);
        claim.extend_from_slice(&((FRAME_LIMIT as u64) + 1).to_le_bytes());
        let e = decode(&claim).unwrap_err().to_string().to_lowercase();
        assert!(e.contains("limitexceeded"), "{e}");
    }
}
