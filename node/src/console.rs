//! Console output: `stampede-node: ...` lines on every console the kernel writes to.
//!
//! `/dev/console` reaches only one of them (the last `console=`); an operator may be watching
//! the serial line or the screen. So once `/sys` and `/dev` are mounted the agent opens each
//! device named in `/sys/class/tty/console/active` and writes every line to all of them. Before
//! that, and if none opens, lines go to standard output, which the kernel connected to
//! `/dev/console` for PID 1.
use std::{
    fmt,
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use nix::fcntl::OFlag;

static CONSOLES: Mutex<Vec<File>> = Mutex::new(Vec::new());
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Prefix of every line, so an operator (and a test) can pick the agent's lines out.
pub const PREFIX: &str = "stampede-node: ";

/// Device names from `/sys/class/tty/console/active` (`tty0 ttyS0`).
pub fn active_consoles(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|name| !name.contains('/') && !name.starts_with('.'))
        .map(str::to_owned)
        .collect()
}

/// Opens the active consoles; keeps standard output if none opens.
pub fn attach() {
    let names = std::fs::read_to_string("/sys/class/tty/console/active")
        .map(|t| active_consoles(&t))
        .unwrap_or_default();
    let files: Vec<File> = names
        .iter()
        .filter_map(|name| {
            OpenOptions::new()
                .write(true)
                // Never become the controlling terminal of PID 1's session.
                .custom_flags(OFlag::O_NOCTTY.bits())
                .open(format!("/dev/{name}"))
                .ok()
        })
        .collect();
    if !files.is_empty() {
        *CONSOLES.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }
}

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Writes one line; never fails (a console that errors is skipped).
pub fn say(args: fmt::Arguments<'_>) {
    // Seconds since boot, as the kernel stamps its own lines, so a console shows where a
    // diskless boot's seconds go (none before /proc is mounted).
    let line = match uptime() {
        Some(t) => format!("{PREFIX}[{t:>12}] {args}\n"),
        None => format!("{PREFIX}{args}\n"),
    };
    let mut consoles = CONSOLES.lock().unwrap_or_else(|p| p.into_inner());
    if consoles.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
        return;
    }
    for console in consoles.iter_mut() {
        let _ = console.write_all(line.as_bytes());
    }
}

/// `/proc/uptime`'s first field (seconds since boot, two decimals), if `/proc` is mounted.
fn uptime() -> Option<String> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

/// A console line.
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::say(format_args!($($arg)*)) };
}

/// A console line only with `stampede.debug`.
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::console::debug_enabled() {
            $crate::console::say(format_args!($($arg)*))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_consoles_are_device_names() {
        assert_eq!(active_consoles("tty0 ttyS0\n"), ["tty0", "ttyS0"]);
        assert_eq!(active_consoles("ttyS0 ../x\n"), ["ttyS0"]);
        assert!(active_consoles("\n").is_empty());
    }
}
