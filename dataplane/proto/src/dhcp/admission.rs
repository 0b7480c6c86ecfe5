//! Which machines the server answers at all, decided on the request the server has already
//! parsed (issue 22: a DISCOVER used to be parsed once for this check, once by the server and
//! once more to log the reply).
use std::collections::HashSet;

use super::wire::Repr;

/// Machines listed as refused, machines known by MAC or SMBIOS UUID, and whether an unknown
/// machine gets an answer. The default admits everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    pub denied_macs: HashSet<[u8; 6]>,
    pub denied_uuids: HashSet<[u8; 16]>,
    pub known_macs: HashSet<[u8; 6]>,
    pub known_uuids: HashSet<[u8; 16]>,
    /// Stay silent to machines neither known nor denied. Proxy mode without a default profile
    /// sets it, so an unlisted machine's firmware moves on to its next boot device quickly.
    pub drop_unknown: bool,
}

/// Why a machine got no answer by its identity. Each is a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// The machine is listed with `allow = false`.
    #[error("machine is not allowed to boot")]
    Denied,
    /// Proxy mode, no machine entry and no default profile. (Authoritative mode still gives such
    /// machines an address: the boot network may hold BMCs and switches.)
    #[error("unknown machine and no default profile")]
    UnknownMachine,
}

impl Refusal {
    pub const ALL: [Self; 2] = [Self::Denied, Self::UnknownMachine];

    /// Stable metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::UnknownMachine => "unknown_machine",
        }
    }

    pub(super) const fn index(self) -> usize {
        match self {
            Self::Denied => 0,
            Self::UnknownMachine => 1,
        }
    }
}

impl Admission {
    /// Whether `req`'s machine is answered. A denial by MAC or by UUID wins over being known.
    pub fn admit(&self, req: &Repr) -> Result<(), Refusal> {
        let mac = req.mac();
        // An all-zero GUID (QEMU's default) identifies nothing, as in `BootConfig::profile_for`.
        let uuid = req
            .options
            .client_uuid
            .map(|u| u.id)
            .filter(|u| *u != [0; 16]);
        if mac.is_some_and(|m| self.denied_macs.contains(&m))
            || uuid.is_some_and(|u| self.denied_uuids.contains(&u))
        {
            return Err(Refusal::Denied);
        }
        let known = mac.is_some_and(|m| self.known_macs.contains(&m))
            || uuid.is_some_and(|u| self.known_uuids.contains(&u));
        if self.drop_unknown && !known {
            return Err(Refusal::UnknownMachine);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::{ClientUuid, MessageType, OpCode};

    fn request(mac: [u8; 6], uuid: Option<[u8; 16]>) -> Repr {
        let mut r = Repr::new(OpCode::BootRequest, 7, mac);
        r.options.message_type = Some(MessageType::Discover);
        r.options.client_uuid = uuid.map(|id| ClientUuid { kind: 0, id });
        r
    }

    #[test]
    fn denial_wins_and_unknown_machines_are_dropped_only_when_asked() {
        let listed = [0x52, 0x54, 0, 1, 2, 3];
        let denied = [0x52, 0x54, 0, 6, 6, 6];
        let stranger = [0x52, 0x54, 0, 9, 9, 9];
        let uuid = [7u8; 16];
        let mut a = Admission::default();
        assert_eq!(
            a.admit(&request(stranger, None)),
            Ok(()),
            "default admits all"
        );
        a.known_macs.insert(listed);
        a.denied_macs.insert(denied);
        a.denied_uuids.insert(uuid);
        assert_eq!(a.admit(&request(denied, None)), Err(Refusal::Denied));
        assert_eq!(
            a.admit(&request(listed, Some(uuid))),
            Err(Refusal::Denied),
            "a denied UUID wins over a known MAC"
        );
        assert_eq!(a.admit(&request(stranger, None)), Ok(()));
        a.drop_unknown = true;
        assert_eq!(
            a.admit(&request(stranger, None)),
            Err(Refusal::UnknownMachine)
        );
        assert_eq!(
            a.admit(&request(stranger, Some([0; 16]))),
            Err(Refusal::UnknownMachine),
            "QEMU's all-zero UUID identifies nobody"
        );
        assert_eq!(a.admit(&request(listed, None)), Ok(()));
    }
}
