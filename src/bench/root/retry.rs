//! How the bench's simulated machines fetch and retry: the node agent's constants and policy.
use std::time::Duration;

/// The node agent's run workers (`RUN_WORKERS` in node/src/agent.rs), each with a kept-alive
/// connection of its own: what one real machine keeps in flight.
pub(super) const NODE_RUN_WORKERS: usize = 2;

/// Chunks per request of the node agent (`RUN_CHUNKS` in node/src/agent.rs).
pub(super) const NODE_RUN_CHUNKS: usize = 16;

/// How a simulated machine rides out a stalled or failed request: the node agent's policy,
/// so the bench counts what machines would do, not a failure the agent would have retried.
/// (The agent is built for another target and its constants are not importable here.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NodeRetry {
    /// Longest wait between bytes of a response before it fails (`FETCH_TIMEOUT`, 10 s).
    pub(super) fetch_timeout: Duration,
    /// Fetches of one chunk before the root step fails (`ChunkRetry::attempts`, 5).
    pub(super) chunk_attempts: u32,
    /// Wait after a chunk's first failure, doubling up to `chunk_max_delay`
    /// (`ChunkRetry`: 0.5 s to 4 s).
    pub(super) chunk_first_delay: Duration,
    pub(super) chunk_max_delay: Duration,
    /// Wait before the whole root step again (manifest, then every chunk) after it failed,
    /// doubling up to `step_max_delay`, minus up to a quarter of jitter (`StepBackoff`: 2 s
    /// to 60 s).
    pub(super) step_first_delay: Duration,
    pub(super) step_max_delay: Duration,
}

impl NodeRetry {
    pub(super) const AGENT: Self = Self {
        fetch_timeout: Duration::from_secs(10),
        chunk_attempts: 5,
        chunk_first_delay: Duration::from_millis(500),
        chunk_max_delay: Duration::from_secs(4),
        step_first_delay: Duration::from_secs(2),
        step_max_delay: Duration::from_secs(60),
    };

    /// Wait before a chunk's next fetch after `failures` failed ones (at least 1).
    pub(super) fn chunk_delay(&self, failures: u32) -> Duration {
        doubled(self.chunk_first_delay, failures.saturating_sub(1)).min(self.chunk_max_delay)
    }

    /// Wait before the root step's next attempt after `failures` failed ones (at least 1),
    /// jittered from `rng` as the agent jitters from its MAC.
    pub(super) fn step_delay(&self, failures: u32, rng: &mut u64) -> Duration {
        let base =
            doubled(self.step_first_delay, failures.saturating_sub(1)).min(self.step_max_delay);
        let quarter = base.as_millis() as u64 / 4;
        let jitter = match quarter {
            0 => 0,
            q => stampede_proto::dhcp::splitmix64(rng) % (q + 1),
        };
        base.saturating_sub(Duration::from_millis(jitter))
    }
}

fn doubled(first: Duration, times: u32) -> Duration {
    first
        .checked_mul(1u32.checked_shl(times).unwrap_or(u32::MAX))
        .unwrap_or(Duration::MAX)
}
