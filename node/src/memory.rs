//! Is there room for the root in RAM? The whole image lives in a `brd` RAM disk, and the
//! overlay's writable layer in tmpfs on top of it.
const MIB: u64 = 1 << 20;

/// Left free beyond the image: the kernel, the agent's fetch buffers (two runs of 16 MiB held
/// while their chunks are checked, or six 1 MiB chunks from an appliance without ranges), and
/// the first minutes of the root's own processes and tmpfs writes. 64 MiB is enough for a
/// busybox or a minimal systemd root; a machine that needs more simply has more.
pub const MARGIN: u64 = 64 * MIB;

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not enough memory for the root: need {need_mib} MiB, have {have_mib} MiB")]
pub struct NotEnoughMemory {
    pub need_mib: u64,
    pub have_mib: u64,
}

/// Checks that `available` covers an image of `image_size` bytes plus [`MARGIN`].
pub fn check(image_size: u64, available: u64) -> Result<(), NotEnoughMemory> {
    let need = image_size.saturating_add(MARGIN);
    if available > need {
        Ok(())
    } else {
        Err(NotEnoughMemory {
            need_mib: need.div_ceil(MIB),
            have_mib: available / MIB,
        })
    }
}

/// `brd`'s `rd_size` (KiB, rounded up) for an image of `image_size` bytes.
pub fn ram_disk_kib(image_size: u64) -> u64 {
    image_size.div_ceil(1024).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:         492212 kB\nMemFree:          420000 kB\n\
                           MemAvailable:     409600 kB\nBuffers:               0 kB\n";

    #[test]
    fn mem_available_is_read_in_bytes() {
        assert_eq!(mem_available(MEMINFO), Some(400 * MIB));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
    }

    #[test]
    fn the_image_plus_margin_must_fit() {
        assert_eq!(check(100 * MIB, 400 * MIB), Ok(()));
        let err = check(400 * MIB, 400 * MIB).expect_err("too big");
        assert_eq!(
            err,
            NotEnoughMemory {
                need_mib: 464,
                have_mib: 400
            }
        );
        assert_eq!(
            err.to_string(),
            "not enough memory for the root: need 464 MiB, have 400 MiB"
        );
        assert!(check(u64::MAX, u64::MAX).is_err(), "no overflow");
        assert_eq!(
            check(0, MARGIN),
            Err(NotEnoughMemory {
                need_mib: 64,
                have_mib: 64
            })
        );
    }

    #[test]
    fn ram_disk_size_rounds_up_to_kib() {
        assert_eq!(ram_disk_kib(4096), 4);
        assert_eq!(ram_disk_kib(4097), 5);
        assert_eq!(ram_disk_kib(0), 1);
    }
}
