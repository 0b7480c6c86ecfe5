//! A transfer's round-trip estimate and the retransmission timeout it gives (RFC 6298 §2).
//!
//! * The first sample R sets SRTT = R and RTTVAR = R/2; each later one sets
//!   RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|, then SRTT = 7/8 SRTT + 1/8 R (RFC 6298 §2.2, §2.3).
//! * RTO = SRTT + max(G, 4 RTTVAR), raised to a floor and capped (RFC 6298 §2.4, §2.5), both
//!   chosen by the caller. A LAN's floor can sit well below RFC 6298's 1 s: a resent DATA block
//!   is harmless to every client (it is acknowledged again, and a duplicate ACK never makes the
//!   server send); the floor spares a loaded client (hundreds of boot processes on two cores),
//!   late by scheduling rather than loss, a resend per block.
//! * Samples come only from datagrams sent once (Karn's algorithm, RFC 6298 §3): the caller
//!   stops timing a datagram when it is retransmitted.
//!
//! Kept in microseconds in `u32` (71 minutes at most): the per-transfer state stays small.
use std::time::Duration;

/// Clock granularity G (RFC 6298 §2): the engine's timers fire with about a millisecond of
/// slack.
const GRANULARITY: Duration = Duration::from_millis(1);

/// SRTT and RTTVAR of one transfer. `Default` is "no sample yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttEstimator {
    srtt_us: u32,
    rttvar_us: u32,
    measured: bool,
}

impl RttEstimator {
    /// Takes one round-trip sample (RFC 6298 §2.2, §2.3, with α = 1/8 and β = 1/4).
    pub fn sample(&mut self, rtt: Duration) {
        let r = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        if self.measured {
            let delta = self.srtt_us.abs_diff(r);
            self.rttvar_us = ((u64::from(self.rttvar_us) * 3 + u64::from(delta)) / 4) as u32;
            self.srtt_us = ((u64::from(self.srtt_us) * 7 + u64::from(r)) / 8) as u32;
        } else {
            self.srtt_us = r;
            self.rttvar_us = r / 2;
            self.measured = true;
        }
    }

    /// The smoothed round trip, once a sample has come.
    pub fn srtt(&self) -> Option<Duration> {
        self.measured
            .then(|| Duration::from_micros(u64::from(self.srtt_us)))
    }

    /// The retransmission timeout from the samples, within `floor..=cap`; `None` before the
    /// first sample (the caller then uses its initial timeout, RFC 6298 §2.1).
    pub fn rto(&self, floor: Duration, cap: Duration) -> Option<Duration> {
        let srtt = self.srtt()?;
        let variance = Duration::from_micros(4 * u64::from(self.rttvar_us)).max(GRANULARITY);
        Some((srtt + variance).max(floor).min(cap.max(floor)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(250);
    const CAP: Duration = Duration::from_secs(8);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_timeout_before_the_first_sample() {
        assert_eq!(RttEstimator::default().rto(FLOOR, CAP), None);
    }

    #[test]
    fn first_sample_sets_srtt_and_half_of_it_as_variance() {
        let mut rtt = RttEstimator::default();
        rtt.sample(ms(400));
        assert_eq!(rtt.srtt(), Some(ms(400)));
        // 400 + 4 × 200 ms (RFC 6298 §2.2).
        assert_eq!(rtt.rto(FLOOR, CAP), Some(ms(1200)));
    }

    #[test]
    fn later_samples_are_smoothed() {
        let mut rtt = RttEstimator::default();
        rtt.sample(ms(800));
        rtt.sample(ms(400));
        // RTTVAR = 3/4 × 400 + 1/4 × |800 - 400| = 400; SRTT = 7/8 × 800 + 1/8 × 400 = 750.
        assert_eq!(rtt.srtt(), Some(ms(750)));
        assert_eq!(rtt.rto(FLOOR, CAP), Some(ms(750 + 1600)));
    }

    #[test]
    fn a_fast_lan_gets_the_floor_and_a_slow_client_the_cap() {
        let mut fast = RttEstimator::default();
        for _ in 0..20 {
            fast.sample(Duration::from_micros(80));
        }
        assert_eq!(fast.rto(FLOOR, CAP), Some(FLOOR));
        let mut slow = RttEstimator::default();
        slow.sample(Duration::from_secs(6));
        assert_eq!(slow.rto(FLOOR, CAP), Some(CAP));
        // A huge sample saturates rather than wraps.
        slow.sample(Duration::from_secs(1 << 40));
        assert_eq!(slow.rto(FLOOR, CAP), Some(CAP));
    }
}
