//! The node agent: PID 1 of the node initramfs Stampede builds for a diskless root.
//!
//! It mounts the API file systems, loads the NIC, RAM disk and file system modules the
//! initramfs carries, leases an address, fetches the root's signed manifest and verifies it
//! with the appliance key baked into the initramfs, assembles the root image in a RAM disk from
//! chunks each verified against the manifest, mounts it read-only under a tmpfs overlay, writes
//! the machine's own files and hands PID 1 over to the root's init. See [`agent`] for the steps
//! and the contract with the appliance.
//!
//! As PID 1 it must never exit: the kernel panics when init dies. Every step retries with
//! backoff and says why on the console; a panic is caught, printed and retried.
#[macro_use]
mod console;

mod agent;
mod assemble;
mod backoff;
mod cmdline;
mod dhcp;
mod events;
mod http;
mod machine_files;
mod memory;
mod modules;
mod netconf;
mod root;
mod swarm;
mod swarm_tool;

use std::{panic, time::Duration};

fn main() {
    // A host-run mode for the lab (never as PID 1): the swarm fetch beside real clients.
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() != 1 && args.get(1).is_some_and(|a| a == "swarm-fetch") {
        std::process::exit(swarm_tool::main(&args[2..]));
    }
    panic::set_hook(Box::new(|info| say!("internal error: {info}")));
    let mut restarts = 0u32;
    loop {
        // `run` only returns by panicking; catch it, wait, start over from the top. Steps done
        // before (mounts, modules, the address) are found done and skipped or redone.
        let _ = panic::catch_unwind(agent::run);
        restarts = restarts.saturating_add(1);
        let wait = Duration::from_secs(u64::from(restarts.min(6)) * 10);
        say!("the agent failed unexpectedly ({restarts} times); starting over in {wait:?}");
        std::thread::sleep(wait);
        if restarts >= 10 {
            agent::reboot_now("the agent keeps failing");
        }
    }
}
