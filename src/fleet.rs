//! Machines and profiles declared through the control API, merged into the configuration the
//! data plane serves. They are merged at the wire level and validated exactly like the file's
//! own entries; an API entry replaces a file entry with the same MAC (machines) or name
//! (profiles). Quarantined entries (stored, but refused by that validation) are left out.
use std::collections::BTreeMap;

use stampede_control::{
    BootProfile, FleetSnapshot, Machine, MachineSpec, ProfileSpec,
    model::{Arch, BootPolicy, BootTarget, FileFleet, FleetEntry, SecureBootChain},
};
use stampede_dataplane::config::wire;

/// The configuration's name of an architecture (`[profiles.arch.<name>]`), for the ones the
/// boot plan distinguishes.
fn arch_name(arch: Arch) -> Option<&'static str> {
    match arch {
        Arch::X86Bios => Some("x86-bios"),
        Arch::EfiX64 => Some("x86_64-efi"),
        Arch::EfiArm64 => Some("arm64-efi"),
        Arch::EfiIa32 | Arch::EfiArm32 => None,
    }
}

pub fn merge(config: &mut wire::Config, fleet: &FleetSnapshot) {
    for (name, profile) in &fleet.profiles {
        if fleet
            .quarantined(&FleetEntry::Profile(name.clone()))
            .is_some()
        {
            continue;
        }
        let spec = profile.spec();
        if spec.ipxe_template.is_some() {
            tracing::warn!(
                profile = %spec.name,
                "custom iPXE templates are not served yet; the built-in script is used"
            );
        }
        let arch = spec
            .variants
            .iter()
            .filter_map(|(arch, target)| {
                let name = arch_name(*arch)?;
                Some((
                    name.to_owned(),
                    wire::ArchVariant {
                        kernel: Some(target.kernel.clone()).filter(|k| !k.is_empty()),
                        initrds: Some(target.initrds.clone()),
                        cmdline: Some(target.cmdline.clone()),
                    },
                ))
            })
            .collect();
        config.profiles.retain(|p| p.name != spec.name);
        config.profiles.push(wire::Profile {
            name: spec.name.clone(),
            root: spec.root.clone(),
            kernel: Some(spec.default.kernel.clone()).filter(|k| !k.is_empty()),
            initrds: spec.default.initrds.clone(),
            cmdline: spec.default.cmdline.clone(),
            arch,
            secure_boot: spec.secure_boot.map(|chain| chain.as_str().to_owned()),
        });
    }
    for (mac, machine) in &fleet.machines {
        if fleet.quarantined(&FleetEntry::Machine(*mac)).is_some() {
            continue;
        }
        let mac = mac.to_string();
        config.machines.retain(|m| {
            m.mac
                .as_deref()
                .is_none_or(|theirs| !theirs.eq_ignore_ascii_case(&mac))
        });
        config.machines.push(wire::Machine {
            mac: Some(mac),
            uuid: machine.uuid.clone(),
            profile: machine.profile.clone(),
            hostname: machine.hostname.clone(),
            labels: machine
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            allow: Some(machine.boot != BootPolicy::Deny),
            ssh_authorized_keys: machine.ssh_authorized_keys.clone(),
        });
    }
}

/// The configuration's own machines and profiles as the control API lists them (`source:
/// file`). Entries the API's model cannot hold are left out of the list (they still serve): a
/// machine known by UUID alone (the API keys machines by MAC), or one the API's validation
/// refuses.
pub fn file_entries(config: &wire::Config) -> FileFleet {
    let arch_of = |name: &str| {
        [Arch::X86Bios, Arch::EfiX64, Arch::EfiArm64]
            .into_iter()
            .find(|a| arch_name(*a) == Some(name))
    };
    let profiles = config
        .profiles
        .iter()
        .filter_map(|p| {
            let variants: BTreeMap<Arch, BootTarget> = p
                .arch
                .iter()
                .filter_map(|(name, v)| {
                    Some((
                        arch_of(name)?,
                        BootTarget {
                            kernel: v.kernel.clone().unwrap_or_default(),
                            initrds: v.initrds.clone().unwrap_or_else(|| p.initrds.clone()),
                            cmdline: v.cmdline.clone().unwrap_or_else(|| p.cmdline.clone()),
                        },
                    ))
                })
                .collect();
            let spec = ProfileSpec {
                name: p.name.clone(),
                root: p.root.clone(),
                default: BootTarget {
                    kernel: p.kernel.clone().unwrap_or_default(),
                    initrds: p.initrds.clone(),
                    cmdline: p.cmdline.clone(),
                },
                ipxe_template: None,
                variants,
                secure_boot: p
                    .secure_boot
                    .as_deref()
                    .and_then(SecureBootChain::from_name),
            };
            let profile = BootProfile::try_from(spec).ok()?;
            Some((p.name.clone(), profile))
        })
        .collect();
    let machines = config
        .machines
        .iter()
        .filter_map(|m| {
            let spec = MachineSpec {
                mac: m.mac.clone()?,
                uuid: m.uuid.clone(),
                arch: None,
                hostname: m.hostname.clone(),
                labels: m
                    .labels
                    .iter()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                profile: m.profile.clone(),
                boot: if m.allow == Some(false) {
                    BootPolicy::Deny
                } else {
                    BootPolicy::Allow
                },
                ssh_authorized_keys: m.ssh_authorized_keys.clone(),
            };
            let machine = Machine::try_from(spec).ok()?;
            Some((machine.mac, machine))
        })
        .collect();
    FileFleet { machines, profiles }
}
