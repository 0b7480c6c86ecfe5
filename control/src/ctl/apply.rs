//! `stampede ctl apply`: a fleet file declared through the API, and what it would change.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::CtlError;
use crate::api_types::PutOutcome;
use crate::client::{Client, Listed};
use crate::model::{BootProfile, EntrySource, MacAddr, Machine, MachineSpec, ProfileSpec};

/// `fleet.toml`: `[[profiles]]` and `[[machines]]` tables with the API's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    #[serde(default)]
    pub profiles: Vec<ProfileSpec>,
    #[serde(default)]
    pub machines: Vec<MachineSpec>,
}

impl FleetFile {
    /// Every entry as the API will validate it, so a bad file is refused before any request.
    pub fn validate(&self) -> Result<(), CtlError> {
        for p in &self.profiles {
            BootProfile::try_from(p.clone())?;
        }
        for m in &self.machines {
            Machine::try_from(m.clone())?;
        }
        Ok(())
    }

    pub fn parse(path: &std::path::Path) -> Result<Self, CtlError> {
        let text = std::fs::read_to_string(path).map_err(|source| CtlError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| CtlError::FleetFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyCounts {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Deleted by `--prune`.
    #[serde(default)]
    pub deleted: usize,
}

/// What `apply` does to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyAction {
    Create,
    Update,
    Unchanged,
    Delete,
}

impl ApplyAction {
    /// Creating or replacing `current` with `wanted`. A quarantined entry sent again is
    /// validated again and stored (the API answers `updated`), even when it is the same.
    fn compare<T: PartialEq>(current: Option<&Listed<T>>, wanted: &T) -> Self {
        match current {
            None => Self::Create,
            Some(c) if c.item == *wanted && c.quarantined.is_none() => Self::Unchanged,
            Some(_) => Self::Update,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Unchanged => "unchanged",
            Self::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Profile,
    Machine,
}

/// One line of `apply --dry-run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChange {
    pub kind: EntryKind,
    /// The profile's name or the machine's MAC.
    pub key: String,
    pub action: ApplyAction,
}

impl ApplyCounts {
    fn count(&mut self, outcome: PutOutcome) {
        match outcome {
            PutOutcome::Created => self.created += 1,
            PutOutcome::Updated => self.updated += 1,
            PutOutcome::Unchanged => self.unchanged += 1,
        }
    }

    pub fn changed(&self) -> usize {
        self.created + self.updated
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub profiles: ApplyCounts,
    pub machines: ApplyCounts,
}

impl Client {
    /// Declares everything in `fleet`: profiles first (machines name them), then machines.
    /// Everything is validated before the first request, so a bad file changes nothing.
    pub async fn apply(&self, fleet: &FleetFile) -> Result<ApplyReport, CtlError> {
        self.apply_pruning(fleet, false).await
    }

    /// [`Client::apply`], and with `prune` then deletes the API's machines and profiles the file
    /// does not declare: machines first, so no deleted profile is still booted.
    pub async fn apply_pruning(
        &self,
        fleet: &FleetFile,
        prune: bool,
    ) -> Result<ApplyReport, CtlError> {
        fleet.validate()?;
        let mut report = ApplyReport::default();
        for p in &fleet.profiles {
            report.profiles.count(self.put_profile(p).await?);
        }
        for m in &fleet.machines {
            report.machines.count(self.put_machine(m).await?);
        }
        if prune {
            let plan = self.plan(fleet, true).await?;
            for change in plan.iter().filter(|c| c.action == ApplyAction::Delete) {
                if change.kind == EntryKind::Machine {
                    self.delete_machine(&change.key).await?;
                    report.machines.deleted += 1;
                }
            }
            for change in plan.iter().filter(|c| c.action == ApplyAction::Delete) {
                if change.kind == EntryKind::Profile {
                    self.delete_profile(&change.key).await?;
                    report.profiles.deleted += 1;
                }
            }
        }
        Ok(report)
    }

    /// What applying `fleet` would do to each entry, changing nothing: the file's profiles and
    /// machines in its order, then (with `prune`) the API entries it would delete. Entries of
    /// the appliance's configuration file are not the API's to change: a file entry with the
    /// same key is created over, and never deleted.
    pub async fn plan(
        &self,
        fleet: &FleetFile,
        prune: bool,
    ) -> Result<Vec<PlannedChange>, CtlError> {
        fleet.validate()?;
        let profiles: BTreeMap<String, Listed<BootProfile>> = self
            .profiles_listed()
            .await?
            .into_iter()
            .filter(|l| l.source == EntrySource::Api)
            .map(|l| (l.item.name().to_owned(), l))
            .collect();
        let machines: BTreeMap<MacAddr, Listed<Machine>> = self
            .machines_listed(None)
            .await?
            .into_iter()
            .filter(|l| l.source == EntrySource::Api)
            .map(|l| (l.item.mac, l))
            .collect();
        let mut plan = Vec::new();
        for spec in &fleet.profiles {
            let wanted = BootProfile::try_from(spec.clone())?;
            plan.push(PlannedChange {
                kind: EntryKind::Profile,
                key: spec.name.clone(),
                action: ApplyAction::compare(profiles.get(&spec.name), &wanted),
            });
        }
        for spec in &fleet.machines {
            let wanted = Machine::try_from(spec.clone())?;
            plan.push(PlannedChange {
                kind: EntryKind::Machine,
                key: wanted.mac.to_string(),
                action: ApplyAction::compare(machines.get(&wanted.mac), &wanted),
            });
        }
        if prune {
            let declared: std::collections::BTreeSet<&str> =
                plan.iter().map(|c| c.key.as_str()).collect();
            let stale_profiles: Vec<PlannedChange> = profiles
                .keys()
                .filter(|name| !declared.contains(name.as_str()))
                .map(|name| PlannedChange {
                    kind: EntryKind::Profile,
                    key: name.clone(),
                    action: ApplyAction::Delete,
                })
                .collect();
            let stale_machines: Vec<PlannedChange> = machines
                .keys()
                .map(ToString::to_string)
                .filter(|mac| !declared.contains(mac.as_str()))
                .map(|mac| PlannedChange {
                    kind: EntryKind::Machine,
                    key: mac,
                    action: ApplyAction::Delete,
                })
                .collect();
            plan.extend(stale_profiles);
            plan.extend(stale_machines);
        }
        Ok(plan)
    }
}
