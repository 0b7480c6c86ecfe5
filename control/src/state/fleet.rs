//! Machines and profiles: reads, writes (each checked by the appliance's validation before it is
//! stored) and what a reload of the boot plan reports.
use std::sync::Arc;

use super::{ControlError, ControlState, json, not_found};
use crate::api_types::PutOutcome;
use crate::audit;
use crate::auth::Caller;
use crate::model::{BootProfile, FileFleet, FleetEntry, FleetSnapshot, MacAddr, Machine};
use crate::store::{DbContext, MACHINES, PROFILES, write_entry};
use crate::validation::{FleetValidator, find_unservable};

impl ControlState {
    // --- machines ---

    pub fn machines(&self) -> Vec<Machine> {
        self.snapshot().machines.values().cloned().collect()
    }

    pub fn machine(&self, mac: MacAddr) -> Result<Machine, ControlError> {
        self.snapshot()
            .machines
            .get(&mac)
            .cloned()
            .ok_or_else(|| not_found("machine", mac))
    }

    /// Creates or replaces a machine. `must_be_new` turns an existing one into an error (POST).
    pub fn put_machine(
        &self,
        actor: &Caller,
        machine: Machine,
        must_be_new: bool,
    ) -> Result<PutOutcome, ControlError> {
        self.mutate(|txn, snap| {
            let key = machine.mac.to_string();
            let old = snap.machines.get(&machine.mac);
            if must_be_new && old.is_some() {
                return Err(ControlError::Exists {
                    kind: "machine",
                    key,
                });
            }
            let entry = FleetEntry::Machine(machine.mac);
            // A quarantined entry sent again unchanged is validated again, not waved through.
            if old == Some(&machine) && snap.quarantined(&entry).is_none() {
                return Ok(PutOutcome::Unchanged);
            }
            snap.quarantine.remove(&entry);
            if let Some(profile) = &machine.profile
                && !snap.profiles.contains_key(profile)
                && !self.file_fleet().profiles.contains_key(profile)
            {
                return Err(ControlError::UnknownProfile {
                    mac: key,
                    profile: profile.clone(),
                });
            }
            let outcome = PutOutcome::of_write(old.is_some());
            write_entry(
                txn,
                MACHINES,
                ("opening machines", "writing a machine"),
                &key,
                &machine,
            )?;
            audit::append(txn, &actor.name, "machine.put", &key, json(&machine))?;
            snap.machines.insert(machine.mac, machine.clone());
            Ok(outcome)
        })
    }

    pub fn delete_machine(&self, actor: &Caller, mac: MacAddr) -> Result<(), ControlError> {
        self.mutate(|txn, snap| {
            let key = mac.to_string();
            if snap.machines.remove(&mac).is_none() {
                if self.file_fleet().machines.contains_key(&mac) {
                    return Err(ControlError::FileDefined {
                        kind: "machine",
                        key,
                    });
                }
                return Err(not_found("machine", mac));
            }
            snap.quarantine.remove(&FleetEntry::Machine(mac));
            txn.open_table(MACHINES)
                .db("opening machines")?
                .remove(key.as_str())
                .db("removing a machine")?;
            audit::append(
                txn,
                &actor.name,
                "machine.delete",
                &key,
                serde_json::Value::Null,
            )?;
            Ok(())
        })
    }

    // --- profiles ---

    pub fn profiles(&self) -> Vec<BootProfile> {
        self.snapshot().profiles.values().cloned().collect()
    }

    pub fn profile(&self, name: &str) -> Result<BootProfile, ControlError> {
        self.snapshot()
            .profiles
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("profile", name))
    }

    pub fn put_profile(
        &self,
        actor: &Caller,
        profile: BootProfile,
        must_be_new: bool,
    ) -> Result<PutOutcome, ControlError> {
        self.mutate(|txn, snap| {
            let key = profile.name().to_owned();
            let old = snap.profiles.get(&key);
            if must_be_new && old.is_some() {
                return Err(ControlError::Exists {
                    kind: "profile",
                    key,
                });
            }
            let entry = FleetEntry::Profile(key.clone());
            if old == Some(&profile) && snap.quarantined(&entry).is_none() {
                return Ok(PutOutcome::Unchanged);
            }
            snap.quarantine.remove(&entry);
            if let Some(root) = profile.root()
                && snap.root(root).is_none()
            {
                return Err(ControlError::UnknownRoot {
                    profile: key,
                    root: root.to_owned(),
                });
            }
            let outcome = PutOutcome::of_write(old.is_some());
            write_entry(
                txn,
                PROFILES,
                ("opening profiles", "writing a profile"),
                &key,
                &profile,
            )?;
            audit::append(txn, &actor.name, "profile.put", &key, json(&profile))?;
            snap.profiles.insert(key, profile.clone());
            Ok(outcome)
        })
    }

    /// Refused while a machine still boots the profile: deleting it would silently stop those
    /// machines from booting.
    pub fn delete_profile(&self, actor: &Caller, name: &str) -> Result<(), ControlError> {
        self.mutate(|txn, snap| {
            if !snap.profiles.contains_key(name) {
                if self.file_fleet().profiles.contains_key(name) {
                    return Err(ControlError::FileDefined {
                        kind: "profile",
                        key: name.to_owned(),
                    });
                }
                return Err(not_found("profile", name));
            }
            let users: Vec<String> = snap
                .machines
                .values()
                .filter(|m| m.profile.as_deref() == Some(name))
                .map(|m| m.mac.to_string())
                .collect();
            if !users.is_empty() {
                return Err(ControlError::InUse {
                    kind: "profile",
                    key: name.to_owned(),
                    reason: format!("machines {} boot it", users.join(", ")),
                });
            }
            snap.profiles.remove(name);
            snap.quarantine
                .remove(&FleetEntry::Profile(name.to_owned()));
            txn.open_table(PROFILES)
                .db("opening profiles")?
                .remove(name)
                .db("removing a profile")?;
            audit::append(
                txn,
                &actor.name,
                "profile.delete",
                name,
                serde_json::Value::Null,
            )?;
            Ok(())
        })
    }

    // --- validation and reloads ---

    /// How every later write is checked: the configuration's own validation. Stored entries it
    /// refuses now are quarantined (listed with why, left out of the boot plan) and returned, so
    /// the rest of the fleet serves. Only the first call has an effect.
    pub fn attach_fleet_validator(
        &self,
        validator: Arc<dyn FleetValidator>,
    ) -> Vec<(FleetEntry, String)> {
        if self.inner.validator.set(Arc::clone(&validator)).is_err() {
            return Vec::new();
        }
        // Both reload counters exist from the start, so a query for them finds zero.
        for outcome in [Ok(()), Err(String::new())] {
            let _ = self.reload_counter(&outcome);
        }
        let _writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot();
        let quarantine = find_unservable(validator.as_ref(), &current);
        if quarantine != current.quarantine {
            let next = FleetSnapshot {
                generation: current.generation + 1,
                quarantine: quarantine.clone(),
                ..FleetSnapshot::clone(&current)
            };
            self.inner.snapshot.send_replace(Arc::new(next));
            self.update_fleet_gauges();
        }
        quarantine.into_iter().collect()
    }

    /// The configuration file's own machines and profiles (none until the appliance attaches
    /// its validator, or when it serves a command-line configuration). Reads the file.
    pub fn file_fleet(&self) -> FileFleet {
        self.inner
            .validator
            .get()
            .map(|v| v.file_fleet())
            .unwrap_or_default()
    }

    /// What the appliance reports after each reload of the data plane: health shows the last
    /// refusal until a reload succeeds, and `stampede_reload_failures_total` counts them.
    pub fn record_reload(&self, outcome: Result<(), String>) {
        if let Some(c) = self.reload_counter(&outcome) {
            c.inc();
        }
        *self
            .inner
            .reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = outcome.err();
    }

    fn reload_counter(&self, outcome: &Result<(), String>) -> Option<crate::metrics::Counter> {
        let (name, help) = match outcome {
            Ok(()) => (
                "stampede_reloads_total",
                "Reloads of the boot plan that were applied",
            ),
            Err(_) => (
                "stampede_reload_failures_total",
                "Reloads of the boot plan that were refused (the previous plan kept serving)",
            ),
        };
        self.inner.metrics.counter(name, help, &[]).ok()
    }

    /// Why the last reload was refused, while no later one succeeded.
    pub fn reload_error(&self) -> Option<String> {
        self.inner
            .reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
