//! Leases and where they are kept.
//!
//! Durability contract: every change goes through [`LeaseStore::apply`], which returns a
//! [`CommitSeq`]. The server holds back a reply that promises a lease (an ACK) until the store
//! reports that sequence number durable, either at once through [`LeaseStore::durable_seq`]
//! (memory store: every write is "durable" when applied) or later through
//! `DhcpServer::handle_lease_durable(seq)` when a group commit finishes. So a durable store only
//! needs to index changes in memory synchronously and fsync batches in the background.
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use super::wire::Repr;

/// Who holds a lease: option 61 if the client sent one, else `htype` + `chaddr` (RFC 2131 §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(pub Vec<u8>);

impl ClientKey {
    pub fn from_request(req: &Repr) -> Self {
        if let Some(id) = req.options.client_id.as_ref().filter(|id| !id.is_empty()) {
            return Self(id.clone());
        }
        let hlen = usize::from(req.hlen).min(16);
        let mut key = Vec::with_capacity(hlen + 1);
        key.push(req.htype);
        key.extend_from_slice(&req.chaddr[..hlen]);
        Self(key)
    }

    /// The holder of a declined address: nobody.
    pub fn nobody() -> Self {
        Self(Vec::new())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseState {
    /// Offered, not yet requested: held briefly so two clients are not offered one address.
    Offered,
    Bound,
    /// A client found the address in use (DHCPDECLINE, RFC 2131 §4.3.3): quarantined until
    /// `expires`.
    Declined,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub client: ClientKey,
    pub mac: [u8; 6],
    pub state: LeaseState,
    pub expires: Instant,
}

impl Lease {
    pub fn is_live(&self, now: Instant) -> bool {
        self.expires > now
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    /// Creates or replaces the lease on `lease.ip`; a client holds one lease, so its previous one
    /// (on another address) goes.
    Put(Lease),
    Remove(Ipv4Addr),
}

/// Position in the store's change log.
pub type CommitSeq = u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseStoreError {
    #[error("lease store is full ({0} leases)")]
    Full(usize),
    #[error("lease store write failed: {0}")]
    Write(String),
}

/// The server's view of leases. Reads are synchronous lookups in memory; see the module doc for
/// how writes become durable.
pub trait LeaseStore {
    fn by_ip(&self, ip: Ipv4Addr) -> Option<Lease>;
    fn by_client(&self, client: &ClientKey) -> Option<Lease>;
    /// Applies a change to the in-memory view at once and returns its sequence number.
    fn apply(&mut self, change: LeaseChange) -> Result<CommitSeq, LeaseStoreError>;
    /// Highest sequence number known durable.
    fn durable_seq(&self) -> CommitSeq;
}

/// A boxed store is a store: the engine holds whichever one the appliance chose.
impl<T: LeaseStore + ?Sized> LeaseStore for Box<T> {
    fn by_ip(&self, ip: Ipv4Addr) -> Option<Lease> {
        (**self).by_ip(ip)
    }
    fn by_client(&self, client: &ClientKey) -> Option<Lease> {
        (**self).by_client(client)
    }
    fn apply(&mut self, change: LeaseChange) -> Result<CommitSeq, LeaseStoreError> {
        (**self).apply(change)
    }
    fn durable_seq(&self) -> CommitSeq {
        (**self).durable_seq()
    }
}

/// Leases in two hash maps; every write is durable when applied.
#[derive(Debug, Clone, Default)]
pub struct MemoryLeaseStore {
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_client: HashMap<ClientKey, Ipv4Addr>,
    seq: CommitSeq,
    /// The changes in order, for tests and for a durable store to learn from.
    pub log: Vec<LeaseChange>,
    /// Keep `log` (off by default: the benchmark runs millions of changes).
    pub keep_log: bool,
}

impl MemoryLeaseStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    fn remove_ip(&mut self, ip: Ipv4Addr) {
        if let Some(old) = self.by_ip.remove(&ip)
            && self.by_client.get(&old.client) == Some(&ip)
        {
            self.by_client.remove(&old.client);
        }
    }
}

impl LeaseStore for MemoryLeaseStore {
    fn by_ip(&self, ip: Ipv4Addr) -> Option<Lease> {
        self.by_ip.get(&ip).cloned()
    }

    fn by_client(&self, client: &ClientKey) -> Option<Lease> {
        let ip = self.by_client.get(client)?;
        self.by_ip.get(ip).cloned()
    }

    fn apply(&mut self, change: LeaseChange) -> Result<CommitSeq, LeaseStoreError> {
        if self.keep_log {
            self.log.push(change.clone());
        }
        match change {
            LeaseChange::Put(lease) => {
                self.remove_ip(lease.ip);
                if !lease.client.0.is_empty() {
                    if let Some(previous) = self.by_client.get(&lease.client).copied() {
                        self.remove_ip(previous);
                    }
                    self.by_client.insert(lease.client.clone(), lease.ip);
                }
                self.by_ip.insert(lease.ip, lease);
            }
            LeaseChange::Remove(ip) => self.remove_ip(ip),
        }
        self.seq += 1;
        Ok(self.seq)
    }

    fn durable_seq(&self) -> CommitSeq {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lease_per_client() {
        let now = Instant::now();
        let mut store = MemoryLeaseStore::new();
        let client = ClientKey(vec![1, 2, 3]);
        let lease = |ip: [u8; 4], client: &ClientKey| Lease {
            ip: Ipv4Addr::from(ip),
            client: client.clone(),
            mac: [0; 6],
            state: LeaseState::Bound,
            expires: now,
        };
        assert_eq!(
            store.apply(LeaseChange::Put(lease([10, 0, 0, 1], &client))),
            Ok(1)
        );
        store
            .apply(LeaseChange::Put(lease([10, 0, 0, 2], &client)))
            .expect("put");
        assert_eq!(store.len(), 1, "the old address was freed");
        assert_eq!(
            store.by_client(&client).map(|l| l.ip),
            Some(Ipv4Addr::new(10, 0, 0, 2))
        );
        // Declining hands the address to nobody.
        store
            .apply(LeaseChange::Put(lease([10, 0, 0, 2], &ClientKey::nobody())))
            .expect("put");
        assert_eq!(store.by_client(&client), None);
        store
            .apply(LeaseChange::Remove(Ipv4Addr::new(10, 0, 0, 2)))
            .expect("remove");
        assert!(store.is_empty());
        assert_eq!(store.durable_seq(), 4);
    }
}
