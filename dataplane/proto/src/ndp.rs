//! Router Advertisements that end IPv6 autoconfiguration at once on an IPv4-only boot network.
//!
//! iPXE configures IPv6 beside DHCPv4 and its "Configuring (net0 ...)" step waits about 13 s for
//! a Router Advertisement that never comes on an IPv4-only LAN. An RA that advertises nothing (no
//! default router: router lifetime 0, RFC 4861 §4.2; no prefix options; M and O flags clear)
//! answers the solicitation and changes nothing on the hosts that receive it.
//!
//! Stampede only answers where no other router speaks: [`RouterAdvertiser`] listens for a
//! while first, and stays silent for as long as it has seen another router's RA recently. It
//! never advertises itself as a default router or any prefix.
//!
//! Sans-IO: ICMPv6 messages in (`handle_icmpv6`, the payload of a raw ICMPv6 socket: the kernel
//! checks and fills the checksum), RAs out (`poll_transmit`), deadlines (`poll_timeout`).
use std::{
    net::Ipv6Addr,
    time::{Duration, Instant},
};

/// ICMPv6 type of a Router Solicitation (RFC 4861 §4.1).
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a Router Advertisement (RFC 4861 §4.2).
pub const ROUTER_ADVERTISEMENT: u8 = 134;

/// The RA Stampede sends: 16 bytes, everything zero but the type. Hop limit 0 and the timers 0
/// mean "unspecified" (RFC 4861 §4.2); router lifetime 0 means "not a default router". The
/// checksum (bytes 2..4) is filled by the kernel for raw ICMPv6 sockets (RFC 3542 §3.1).
pub const EMPTY_ADVERTISEMENT: [u8; 16] = {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra
};

/// What the advertiser is doing, for the log and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvertiserState {
    /// Watching the link for other routers before saying anything.
    Listening,
    /// No other router seen: solicitations are answered.
    Answering,
    /// Another router advertised recently: silent until it has been quiet for a while.
    OtherRouter(Ipv6Addr),
}

/// Tuning, with what each value is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvertiserConfig {
    /// Listening before the first answer. Routers advertise unsolicited at least every
    /// `MaxRtrAdvInterval` (default 600 s, RFC 4861 §6.2.1), but they also answer the
    /// solicitations hosts send at boot, so on a live network a router shows itself within
    /// seconds of the first machine booting; 3 s costs nothing on a boot network.
    pub listen: Duration,
    /// After another router's RA, stay silent this long (RFC 4861's default router lifetime,
    /// 1800 s, is how long hosts trust it).
    pub quiet_after_other: Duration,
    /// Answers sent at most this often: a whole rack soliciting at once gets one RA per
    /// interval (the RA goes to all nodes), RFC 4861 §6.2.6's MIN_DELAY_BETWEEN_RAS is 3 s; a
    /// boot network wants answers sooner, and a zero-lifetime RA is cheap.
    pub min_interval: Duration,
}

impl Default for AdvertiserConfig {
    fn default() -> Self {
        Self {
            listen: Duration::from_secs(3),
            quiet_after_other: Duration::from_secs(1800),
            min_interval: Duration::from_millis(200),
        }
    }
}

/// Counters; every ignored message has a reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdvertiserStats {
    pub solicitations: u64,
    pub advertisements_sent: u64,
    pub other_router_advertisements: u64,
    /// Solicitations not answered because another router is present or we are still listening.
    pub silent: u64,
    /// Solicitations folded into an answer already scheduled (rate limit).
    pub coalesced: u64,
    pub malformed: u64,
}

/// The decision logic of the RA responder.
#[derive(Debug)]
pub struct RouterAdvertiser {
    config: AdvertiserConfig,
    listening_until: Instant,
    other: Option<(Ipv6Addr, Instant)>,
    /// An answer is due at this time.
    due: Option<Instant>,
    last_sent: Option<Instant>,
    stats: AdvertiserStats,
}

impl RouterAdvertiser {
    pub fn new(now: Instant, config: AdvertiserConfig) -> Self {
        Self {
            config,
            listening_until: now + config.listen,
            other: None,
            due: None,
            last_sent: None,
            stats: AdvertiserStats::default(),
        }
    }

    pub fn state(&self, now: Instant) -> AdvertiserState {
        match self.other {
            Some((router, seen)) if now < seen + self.config.quiet_after_other => {
                AdvertiserState::OtherRouter(router)
            }
            _ if now < self.listening_until => AdvertiserState::Listening,
            _ => AdvertiserState::Answering,
        }
    }

    pub fn stats(&self) -> AdvertiserStats {
        self.stats
    }

    /// An ICMPv6 message from `source`. `own` says whether the source is one of this host's
    /// addresses (our own RAs come back on the raw socket; they are not another router).
    pub fn handle_icmpv6(&mut self, now: Instant, source: Ipv6Addr, own: bool, message: &[u8]) {
        match message.first() {
            Some(&ROUTER_SOLICITATION) => {
                // RS: type, code, checksum, 4 reserved bytes (RFC 4861 §4.1); code must be 0.
                if message.len() < 8 || message[1] != 0 {
                    self.stats.malformed += 1;
                    return;
                }
                self.stats.solicitations += 1;
                if self.state(now) != AdvertiserState::Answering {
                    self.stats.silent += 1;
                    return;
                }
                if self.due.is_some() {
                    self.stats.coalesced += 1;
                    return;
                }
                let earliest = self.last_sent.map_or(now, |t| t + self.config.min_interval);
                self.due = Some(earliest.max(now));
            }
            Some(&ROUTER_ADVERTISEMENT) => {
                if message.len() < 16 || message[1] != 0 {
                    self.stats.malformed += 1;
                    return;
                }
                if own {
                    return;
                }
                self.stats.other_router_advertisements += 1;
                self.other = Some((source, now));
                self.due = None;
            }
            _ => {}
        }
    }

    /// The RA to send to all nodes (ff02::1), if one is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<[u8; 16]> {
        let due = self.due?;
        if now < due {
            return None;
        }
        self.due = None;
        if self.state(now) != AdvertiserState::Answering {
            return None;
        }
        self.last_sent = Some(now);
        self.stats.advertisements_sent += 1;
        Some(EMPTY_ADVERTISEMENT)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS: [u8; 8] = [ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    const LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
    const ROUTER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

    fn other_ra() -> [u8; 16] {
        let mut ra = EMPTY_ADVERTISEMENT;
        ra[6..8].copy_from_slice(&1800u16.to_be_bytes());
        ra
    }

    #[test]
    fn listens_first_then_answers_every_solicitation_with_an_empty_ra() {
        let t0 = Instant::now();
        let mut ra = RouterAdvertiser::new(t0, AdvertiserConfig::default());
        ra.handle_icmpv6(t0 + Duration::from_secs(1), LL, false, &RS);
        assert_eq!(
            ra.poll_transmit(t0 + Duration::from_secs(1)),
            None,
            "still listening"
        );
        assert_eq!(ra.stats().silent, 1);

        let t = t0 + Duration::from_secs(3);
        assert_eq!(ra.state(t), AdvertiserState::Answering);
        ra.handle_icmpv6(t, LL, false, &RS);
        assert_eq!(ra.poll_timeout(), Some(t), "answered at once");
        let sent = ra.poll_transmit(t).expect("an RA");
        assert_eq!(sent[0], ROUTER_ADVERTISEMENT);
        assert_eq!(
            &sent[4..],
            &[0u8; 12],
            "no hop limit, flags, lifetime, timers"
        );
        assert_eq!(
            sent.len(),
            16,
            "no options: no prefix, no MTU, no source link-layer address"
        );
    }

    #[test]
    fn a_burst_of_solicitations_gets_one_answer_per_interval() {
        let t0 = Instant::now();
        let config = AdvertiserConfig {
            listen: Duration::ZERO,
            ..AdvertiserConfig::default()
        };
        let mut ra = RouterAdvertiser::new(t0, config);
        ra.handle_icmpv6(t0, LL, false, &RS);
        assert!(ra.poll_transmit(t0).is_some());
        for i in 1..50u64 {
            ra.handle_icmpv6(t0 + Duration::from_millis(i), LL, false, &RS);
        }
        assert_eq!(
            ra.poll_timeout(),
            Some(t0 + config.min_interval),
            "next answer after the interval"
        );
        assert_eq!(ra.poll_transmit(t0 + Duration::from_millis(100)), None);
        assert!(ra.poll_transmit(t0 + config.min_interval).is_some());
        assert_eq!(ra.stats().advertisements_sent, 2);
        assert_eq!(ra.stats().coalesced, 48);
    }

    #[test]
    fn another_router_silences_it_until_quiet_and_own_ras_do_not() {
        let t0 = Instant::now();
        let config = AdvertiserConfig {
            listen: Duration::ZERO,
            ..AdvertiserConfig::default()
        };
        let mut ra = RouterAdvertiser::new(t0, config);
        ra.handle_icmpv6(t0, LL, true, &EMPTY_ADVERTISEMENT);
        assert_eq!(
            ra.state(t0),
            AdvertiserState::Answering,
            "our own RA coming back"
        );

        ra.handle_icmpv6(t0, ROUTER, false, &other_ra());
        assert_eq!(ra.state(t0), AdvertiserState::OtherRouter(ROUTER));
        ra.handle_icmpv6(t0, LL, false, &RS);
        assert_eq!(ra.poll_timeout(), None);
        assert_eq!(ra.poll_transmit(t0), None, "silent beside a router");

        let later = t0 + config.quiet_after_other;
        assert_eq!(
            ra.state(later),
            AdvertiserState::Answering,
            "the router went quiet"
        );
        ra.handle_icmpv6(later, LL, false, &RS);
        assert!(ra.poll_transmit(later).is_some());
    }

    #[test]
    fn an_answer_due_is_dropped_when_a_router_appears() {
        let t0 = Instant::now();
        let config = AdvertiserConfig {
            listen: Duration::ZERO,
            ..AdvertiserConfig::default()
        };
        let mut ra = RouterAdvertiser::new(t0, config);
        ra.handle_icmpv6(t0, LL, false, &RS);
        ra.handle_icmpv6(t0, ROUTER, false, &other_ra());
        assert_eq!(ra.poll_transmit(t0), None);
    }

    #[test]
    fn malformed_messages_are_counted_and_others_ignored() {
        let t0 = Instant::now();
        let mut ra = RouterAdvertiser::new(t0, AdvertiserConfig::default());
        ra.handle_icmpv6(t0, LL, false, &RS[..4]);
        ra.handle_icmpv6(t0, LL, false, &[ROUTER_SOLICITATION, 1, 0, 0, 0, 0, 0, 0]);
        ra.handle_icmpv6(t0, ROUTER, false, &other_ra()[..10]);
        ra.handle_icmpv6(t0, LL, false, &[135, 0, 0, 0]);
        ra.handle_icmpv6(t0, LL, false, &[]);
        assert_eq!(ra.stats().malformed, 3);
        assert_eq!(ra.state(t0), AdvertiserState::Listening);
    }
}
