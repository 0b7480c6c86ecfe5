//! Whether the running appliance can serve a fleet. The control crate cannot validate a fleet
//! itself (the configuration's validation is the data plane's), so the appliance installs a
//! [`FleetValidator`] that merges the fleet into its configuration's wire form and runs the same
//! `TryFrom` a reload runs. Every API write is checked with it before it is stored; at start,
//! stored entries it refuses are quarantined ([`find_unservable`]) instead of stopping the start.
use std::collections::BTreeMap;

use crate::model::{FileFleet, FleetEntry, FleetSnapshot};

pub trait FleetValidator: Send + Sync + std::fmt::Debug + 'static {
    /// `Ok` when the appliance can serve `fleet` (its quarantined entries left out), else the
    /// validation's reason, naming the key.
    fn validate(&self, fleet: &FleetSnapshot) -> Result<(), String>;

    /// `Ok` when an API write may turn `current` into `next`: [`FleetValidator::validate`] of
    /// `next`, and whatever holds only for what the write itself brings (the appliance checks
    /// that the files a written profile boots are on disk; one that disappears later from a
    /// stored profile is reported by the reload, not a reason to refuse unrelated writes).
    fn validate_write(&self, current: &FleetSnapshot, next: &FleetSnapshot) -> Result<(), String> {
        let _ = current;
        self.validate(next)
    }

    /// The machines and profiles the configuration declares itself (its file, as on disk now,
    /// like [`FleetValidator::validate`]'s): listed beside the API's, and profiles API machines
    /// may name. None by default (a configuration made from the command line).
    fn file_fleet(&self) -> FileFleet {
        FileFleet::default()
    }
}

/// The entries of `fleet` that cannot be served, each with the validation's reason; the fleet
/// without them validates. Profiles are added one at a time, then machines (which name them),
/// each kept only if the fleet with it still validates, so one bad entry never takes the
/// others with it. When even the fleet without any entry is refused the configuration itself
/// is at fault: nothing is quarantined and the caller's own validation reports it.
pub fn find_unservable(
    validator: &dyn FleetValidator,
    fleet: &FleetSnapshot,
) -> BTreeMap<FleetEntry, String> {
    let mut candidate = FleetSnapshot {
        quarantine: BTreeMap::new(),
        ..fleet.clone()
    };
    let mut out = BTreeMap::new();
    if validator.validate(&candidate).is_ok() {
        return out;
    }
    candidate.machines.clear();
    candidate.profiles.clear();
    if validator.validate(&candidate).is_err() {
        return out;
    }
    for (name, profile) in &fleet.profiles {
        candidate.profiles.insert(name.clone(), profile.clone());
        if let Err(reason) = validator.validate(&candidate) {
            candidate.profiles.remove(name);
            out.insert(FleetEntry::Profile(name.clone()), reason);
        }
    }
    for (mac, machine) in &fleet.machines {
        candidate.machines.insert(*mac, machine.clone());
        if let Err(reason) = validator.validate(&candidate) {
            candidate.machines.remove(mac);
            out.insert(FleetEntry::Machine(*mac), reason);
        }
    }
    out
}
