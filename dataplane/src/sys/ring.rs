//! The io_uring core every worker is built on: one ring, the one `unsafe` push, submitting,
//! reaping, and the deadline timer.
//!
//! The shape follows tokio-rs/io-uring and monoio: building a submission entry is safe; pushing
//! it ([`Ring::push`]) is the one `unsafe` point, because whatever it points at (a `msghdr`, a
//! payload, a `timespec`, provided buffers) must stay valid until the kernel posts the entry's
//! completion. The workers built on this core ([`super::uring_udp`], [`super::uring_tcp`],
//! [`super::uring_client`]) each own what their entries point at and keep it until the
//! completion arrives, also when the operation is cancelled.
//!
//! Completions are reaped into a queue ([`Ring::pop`]) that the owner handles in order, except
//! those of the core's own deadline timer, which it handles itself: a worker keeps one timer armed
//! at its earliest deadline ([`Ring::arm_deadline`]) and asks whether it fired.
use std::{
    collections::VecDeque,
    io,
    time::{Duration, Instant},
};

use io_uring::{IoUring, Submitter, opcode, squeue, types::Timespec};

/// Errors from a ring and the workers on it.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// The kernel lacks operations the engine cannot work without; every missing one is named.
    #[error("this kernel's io_uring lacks {}", missing.join(", "))]
    Unsupported { missing: Vec<&'static str> },
    #[error("{op}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("invalid worker configuration: {0}")]
    Config(&'static str),
}

impl UringError {
    pub(super) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { op, source }
    }
}

/// One completion, as reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Completion {
    pub(super) user_data: u64,
    pub(super) result: i32,
    pub(super) flags: u32,
}

// user_data whose top two bits are 01 belongs to the core (its timer): owners tag their own
// operations otherwise. The timeout of generation `g` is `TIMER | g`.
const CORE_MASK: u64 = 0b11 << 62;
const TIMER: u64 = 0b01 << 62;
/// The removal or cancellation of a timeout.
const TIMER_CONTROL: u64 = TIMER | 1 << 61;

/// One io_uring and the completions reaped from it.
///
/// Dropping it closes the ring, and the kernel then cancels what is still in flight, but without
/// waiting for it: owners of memory an operation points at drain their operations first (each
/// worker's `Drop`), and declare the ring as their first field so it goes before that memory.
pub(super) struct Ring {
    ring: IoUring,
    /// Reaped and not yet handed to the owner, in the order the kernel posted them.
    completions: VecDeque<Completion>,
    timer: DeadlineTimer,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("completions", &self.completions.len())
            .field("timer", &self.timer)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring of `entries` submission and `cq_entries` completion queue entries.
    ///
    /// With `IORING_SETUP_COOP_TASKRUN`: completions are processed when the owner next enters
    /// the kernel (workers always wait in `io_uring_enter`) instead of interrupting it with task
    /// work for every one; kernels before 5.19 refuse the flag, so the ring is made without it.
    pub(super) fn new(entries: u32, cq_entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_coop_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(cq_entries).build(entries))?;
        Ok(Self {
            ring,
            completions: VecDeque::new(),
            timer: DeadlineTimer::default(),
        })
    }

    /// For registrations (buffer rings, probes).
    pub(super) fn submitter(&self) -> Submitter<'_> {
        self.ring.submitter()
    }

    /// Queues one entry, submitting to make room when the submission queue is full.
    ///
    /// # Safety
    /// Everything `entry` points at (buffers, a `msghdr` and what it points at, a `timespec`,
    /// the descriptor) must stay valid until its completion is reaped.
    pub(super) unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<(), UringError> {
        loop {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // Full: hand what is queued to the kernel and try again.
            self.submit(0)?;
        }
    }

    /// Submits and, if `want > 0`, waits for that many completions.
    pub(super) fn submit(&mut self, want: usize) -> Result<(), UringError> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EBUSY: the completion queue overflowed and the kernel wants us to reap before
                // it accepts more submissions (IORING_FEAT_NODROP, 5.5).
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.reap(),
                Err(e) => return Err(UringError::io("io_uring_enter")(e)),
            }
        }
    }

    /// Submits and waits for one completion, or until `timeout` (forever if `None`). A signal
    /// ends the wait early; that is not an error.
    pub(super) fn wait(&mut self, timeout: Option<Duration>) -> Result<(), UringError> {
        let Some(timeout) = timeout else {
            return self.submit(1);
        };
        let timespec = Timespec::from(timeout);
        let args = io_uring::types::SubmitArgs::new().timespec(&timespec);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                self.reap();
                Ok(())
            }
            Err(e) => Err(UringError::io("io_uring_enter")(e)),
        }
    }

    /// Takes every completion off the ring: the timer's are handled here, the others queued for
    /// [`pop`](Self::pop).
    pub(super) fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let (user_data, result, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            if user_data & CORE_MASK == TIMER {
                self.timer.complete(user_data, result);
            } else {
                self.completions.push_back(Completion {
                    user_data,
                    result,
                    flags,
                });
            }
        }
    }

    /// The oldest completion reaped and not yet handled.
    pub(super) fn pop(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// Whether completions wait to be handled.
    pub(super) fn has_completions(&self) -> bool {
        !self.completions.is_empty()
    }

    /// Queues a completion the owner makes up itself, handled after those already reaped (e.g.
    /// the close of a connection with nothing in flight, reported like any other).
    pub(super) fn push_completion(&mut self, completion: Completion) {
        self.completions.push_back(completion);
    }

    /// Keeps one timeout armed at `deadline` (none if `None`), replacing a timeout armed for
    /// another deadline. Its firing shows in [`deadline_fired`](Self::deadline_fired).
    pub(super) fn arm_deadline(&mut self, deadline: Option<Instant>) -> Result<(), UringError> {
        if self.timer.is_armed_at(deadline) {
            return Ok(());
        }
        for generation in self.timer.remove_all() {
            let entry = opcode::TimeoutRemove::new(TIMER | generation)
                .build()
                .user_data(TIMER_CONTROL);
            // SAFETY: TimeoutRemove refers to no memory, only to a user_data value.
            unsafe { self.push(&entry)? };
            self.timer.control_in_flight += 1;
        }
        let Some(deadline) = deadline else {
            return Ok(());
        };
        let (generation, timespec) = self.timer.arm(deadline);
        let entry = opcode::Timeout::new(timespec)
            .build()
            .user_data(TIMER | generation);
        // SAFETY: the timespec is boxed in `self.timer` until the timeout's completion.
        unsafe { self.push(&entry) }
    }

    /// Whether the armed timeout fired since [`clear_deadline_fired`](Self::clear_deadline_fired).
    pub(super) fn deadline_fired(&self) -> bool {
        self.timer.fired
    }

    pub(super) fn clear_deadline_fired(&mut self) {
        self.timer.fired = false;
    }

    /// Cancels every pending timeout (on shutdown); their completions still count in
    /// [`in_flight`](Self::in_flight) until reaped. Best effort: a timeout whose cancellation
    /// cannot be pushed expires by itself.
    pub(super) fn cancel_deadline(&mut self) {
        let targets: Vec<u64> = self.timer.pending.iter().map(|t| t.generation).collect();
        for generation in targets {
            let entry = opcode::AsyncCancel::new(TIMER | generation)
                .build()
                .user_data(TIMER_CONTROL);
            // SAFETY: AsyncCancel refers to no memory.
            if unsafe { self.push(&entry) }.is_ok() {
                self.timer.control_in_flight += 1;
            }
        }
    }

    /// The core's own operations in flight (timeouts and their removals).
    pub(super) fn in_flight(&self) -> usize {
        self.timer.pending.len() + self.timer.control_in_flight
    }
}

/// The timeouts of one ring: at most one live, plus those being removed. Each `timespec` is
/// read when the entry is prepared, but stays boxed until the completion so that no submission
/// path can outlive it.
#[derive(Debug, Default)]
struct DeadlineTimer {
    pending: Vec<Timeout>,
    next_generation: u64,
    /// Removals and cancellations of timeouts in flight.
    control_in_flight: usize,
    fired: bool,
}

#[derive(Debug)]
struct Timeout {
    generation: u64,
    deadline: Instant,
    timespec: Box<Timespec>,
    /// A TimeoutRemove (or cancel) was pushed for it.
    removing: bool,
}

impl DeadlineTimer {
    fn is_armed_at(&self, deadline: Option<Instant>) -> bool {
        self.pending
            .iter()
            .any(|t| !t.removing && Some(t.deadline) == deadline)
    }

    /// Marks every live timeout as being removed; returns their generations.
    fn remove_all(&mut self) -> Vec<u64> {
        self.pending
            .iter_mut()
            .filter(|t| !t.removing)
            .map(|t| {
                t.removing = true;
                t.generation
            })
            .collect()
    }

    /// A new timeout for `deadline`: its generation and the `timespec` to point the entry at.
    fn arm(&mut self, deadline: Instant) -> (u64, *const Timespec) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let timespec = Box::new(Timespec::from(
            deadline.saturating_duration_since(Instant::now()),
        ));
        let pointer = &raw const *timespec;
        self.pending.push(Timeout {
            generation,
            deadline,
            timespec,
            removing: false,
        });
        (generation, pointer)
    }

    fn complete(&mut self, user_data: u64, result: i32) {
        if user_data == TIMER_CONTROL {
            self.control_in_flight -= 1;
            return;
        }
        let generation = user_data & !TIMER;
        if let Some(i) = self.pending.iter().position(|t| t.generation == generation) {
            let timeout = self.pending.swap_remove(i);
            drop(timeout.timespec);
            if -result == libc::ETIME && !timeout.removing {
                self.fired = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Option<Ring> {
        match Ring::new(8, 16) {
            Ok(ring) => Some(ring),
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipping io_uring test: {e}");
                None
            }
            Err(e) => panic!("CI=true and io_uring is not usable: {e}"),
        }
    }

    #[test]
    fn the_deadline_fires_and_a_new_one_replaces_the_old() {
        let Some(mut ring) = ring() else { return };
        let far = Instant::now() + Duration::from_secs(30);
        ring.arm_deadline(Some(far)).expect("arm");
        ring.arm_deadline(Some(far))
            .expect("same deadline: nothing new");
        assert_eq!(ring.in_flight(), 1);
        let start = Instant::now();
        ring.arm_deadline(Some(start + Duration::from_millis(20)))
            .expect("re-arm");
        while !ring.deadline_fired() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the timer never fired"
            );
            ring.submit(1).expect("wait");
            ring.reap();
        }
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert!(
            !ring.has_completions(),
            "the timer's completions stay in the core"
        );
        while ring.in_flight() > 0 {
            ring.wait(Some(Duration::from_millis(100))).expect("wait");
            ring.reap();
        }
        ring.clear_deadline_fired();
        assert!(!ring.deadline_fired());
    }

    #[test]
    fn other_completions_are_queued_in_order() {
        let Some(mut ring) = ring() else { return };
        for user_data in [1, 2, 1 << 63] {
            let entry = opcode::Nop::new().build().user_data(user_data);
            // SAFETY: a nop points at no memory.
            unsafe { ring.push(&entry) }.expect("push");
        }
        ring.submit(3).expect("submit");
        ring.reap();
        ring.push_completion(Completion {
            user_data: 9,
            result: 0,
            flags: 0,
        });
        let order: Vec<u64> = std::iter::from_fn(|| ring.pop().map(|c| c.user_data)).collect();
        assert_eq!(order, [1, 2, 1 << 63, 9]);
    }

    #[test]
    fn a_full_submission_queue_is_submitted_not_refused() {
        let Some(mut ring) = ring() else { return };
        for user_data in 0..20 {
            let entry = opcode::Nop::new().build().user_data(user_data);
            // SAFETY: a nop points at no memory.
            unsafe { ring.push(&entry) }.expect("push");
        }
        ring.submit(0).expect("submit");
        let mut seen = 0;
        let give_up = Instant::now() + Duration::from_secs(5);
        while seen < 20 {
            assert!(Instant::now() < give_up, "{seen} of 20 completions");
            ring.wait(Some(Duration::from_secs(1))).expect("wait");
            ring.reap();
            while ring.pop().is_some() {
                seen += 1;
            }
        }
    }
}
