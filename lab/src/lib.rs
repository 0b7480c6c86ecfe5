//! A network-namespace lab for Stampede's tests, demo and benchmark harness.
//!
//! Every lab object has a name unique to this process and call (so tests run in parallel), lives
//! only inside namespaces the lab created (the host's own interfaces and routes are never
//! touched), is addressed inside 198.18.0.0/15 (RFC 2544 benchmarking space), and is removed when
//! dropped, also while a test unwinds from a panic. Namespaces left behind by a process that died
//! are removed by [`cleanup_stale`], which [`Netns::new`] runs once per process.
//!
//! The lab drives iproute2's `ip` through one helper ([`ip`]): namespaces made with `ip netns`
//! are visible to operators (`ip netns list`) while a test runs, which is worth more here than
//! avoiding a process spawn.
use std::{
    io::Read,
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub mod console;
pub mod debian_root;
pub mod edk2;
pub mod flood;
pub mod guest;
pub mod peers;
pub mod qemu;
pub mod rng;
pub mod root_image;

/// Prefix of every namespace the lab creates: `stampede-<pid>-<seq>-<tag>`.
pub const NETNS_PREFIX: &str = "stampede-";

static SEQ: AtomicU32 = AtomicU32::new(0);
static CLEANUP: Once = Once::new();

/// Errors from lab operations, with the command that failed and what it said.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("lab name {0:?} is not usable (too long or bad characters)")]
    BadName(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Why the lab cannot run here, or `None` when it can (root, iproute2, network namespaces).
pub fn unavailable_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the network-namespace lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)".into());
    }
    if which("ip").is_none() {
        return Some("iproute2's `ip` is not installed (run `cargo xtask setup`)".into());
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Some("this kernel has no network namespaces".into());
    }
    None
}

/// True when running under CI (`CI=true`): a missing capability is then a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Gate for tests that need the lab (and optionally some programs). Returns `true` when the test
/// can run. Otherwise, under CI it panics with the reason; elsewhere it prints the reason and
/// returns `false` so the test can skip.
pub fn require(test: &str, programs: &[&str]) -> bool {
    let mut reasons: Vec<String> = unavailable_reason().into_iter().collect();
    for program in programs {
        if which(program).is_none() {
            reasons.push(format!(
                "`{program}` is not installed (run `cargo xtask setup`)"
            ));
        }
    }
    if reasons.is_empty() {
        return true;
    }
    let reason = reasons.join("; ");
    if in_ci() {
        panic!("{test}: cannot run under CI: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// The name of the function the macro is used in (a test's own name; closures inside it are
/// seen through), so a [`require!`] label cannot drift from the test it gates.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        $crate::function_of(::std::any::type_name_of_val(&here))
    }};
}

/// [`require()`] labelled with the calling test's name ([`test_name!`]).
#[macro_export]
macro_rules! require {
    ($programs:expr $(,)?) => {
        $crate::require($crate::test_name!(), $programs)
    };
}

/// The last path segment of `path` (`crate::module::function::here`) naming a function: the
/// `here` marker [`test_name!`] defines and any `{{closure}}` segments are skipped.
#[doc(hidden)]
pub fn function_of(path: &'static str) -> &'static str {
    path.rsplit("::")
        .find(|segment| *segment != "here" && *segment != "{{closure}}")
        .unwrap_or(path)
}

/// Finds `program` on PATH (or as an absolute path).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        let path = Path::new(program);
        return path.is_file().then(|| path.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `ip ARGS`: the one place the lab changes network configuration.
pub fn ip(args: &[&str]) -> Result<String> {
    let mut command = Command::new("ip");
    command.args(args);
    Ok(run_with_timeout(command, Duration::from_secs(10))?
        .ok()?
        .stdout)
}

/// Removes namespaces named `stampede-<pid>-...` whose process no longer exists (left behind by
/// a run that crashed or was killed). Namespaces of live processes are left alone, so parallel
/// test binaries do not remove each other's labs.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let list = ip(&["netns", "list"])?;
    let mut removed = Vec::new();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            ip(&["netns", "delete", name])?;
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}

/// A network namespace owned by this process; deleted on drop (with every interface in it).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `stampede-<pid>-<seq>-<tag>`, with loopback up.
    pub fn new(tag: &str) -> Result<Self> {
        if tag.is_empty() || tag.len() > 16 || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(LabError::BadName(tag.to_owned()));
        }
        CLEANUP.call_once(|| {
            if let Err(err) = cleanup_stale() {
                eprintln!("lab: removing stale namespaces failed: {err}");
            }
        });
        let name = format!("{NETNS_PREFIX}{}-{}-{tag}", std::process::id(), next_seq());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `program ARGS` inside the namespace, killing it after `timeout`.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut command = self.command(program);
        command.args(args);
        run_with_timeout(command, timeout)
    }

    /// Starts `program ARGS` inside the namespace; it is killed when the returned guard drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<Process> {
        let mut command = self.command(program);
        command.args(args);
        Process::spawn(command)
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv6.conf.all.disable_ipv6`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(
            "sysctl",
            &["-q", "-w", &format!("{key}={value}")],
            Duration::from_secs(5),
        )?
        .ok()
        .map(drop)
    }

    /// Reads an interface statistic (`tx_packets`, `rx_packets`, ...) from sysfs in the namespace.
    pub fn link_stat(&self, iface: &str, stat: &str) -> Result<u64> {
        let path = format!("/sys/class/net/{iface}/statistics/{stat}");
        let out = self.run("cat", &[&path], Duration::from_secs(5))?.ok()?;
        out.stdout.trim().parse().map_err(|_| LabError::Failed {
            command: format!("cat {path}"),
            status: out.status,
            stderr: format!("not a number: {:?}", out.stdout),
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "delete", &self.name]) {
            eprintln!("lab: deleting namespace {} failed: {err}", self.name);
        }
    }
}

/// A unique interface name (at most 15 bytes, the kernel's IFNAMSIZ - 1): `sp<pid><seq><role>`.
pub fn unique_ifname(role: &str) -> String {
    let name = format!(
        "sp{:x}{}{role}",
        std::process::id() & 0xFF_FFFF,
        next_seq() % 1000
    );
    name.chars().take(15).collect()
}

/// A /24 inside 198.18.0.0/15. Each call returns the next one (512 in all, then wraps), so labs
/// running side by side are told apart in captures even though their namespaces isolate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    third: u8,
    second: u8,
}

impl Subnet {
    pub fn allocate() -> Self {
        let n = next_seq() % 512;
        Self {
            second: 18 + (n / 256) as u8,
            third: (n % 256) as u8,
        }
    }

    /// Host `n` (1..=254) of the subnet.
    pub fn host(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, self.second, self.third, n)
    }

    pub fn prefix_len(&self) -> u8 {
        24
    }

    /// `198.18.x.n/24`, for `ip addr add`.
    pub fn cidr(&self, n: u8) -> String {
        format!("{}/{}", self.host(n), self.prefix_len())
    }

    pub fn network(&self) -> Ipv4Addr {
        self.host(0)
    }
}

/// Creates a veth pair with one end in `a` and the other in `b`, both up. Nothing is created in
/// the host's namespace.
pub fn veth_pair(a: &Netns, b: &Netns) -> Result<(String, String)> {
    let name_a = unique_ifname("a");
    let name_b = unique_ifname("b");
    a.ip(&[
        "link",
        "add",
        &name_a,
        "type",
        "veth",
        "peer",
        "name",
        &name_b,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", &name_a, "up"])?;
    b.ip(&["link", "set", &name_b, "up"])?;
    Ok((name_a, name_b))
}

/// Creates a bridge in `ns` with STP off and no forwarding delay (so DHCP flows at once), up.
pub fn bridge(ns: &Netns) -> Result<String> {
    let name = unique_ifname("br");
    ns.ip(&[
        "link",
        "add",
        &name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ])?;
    ns.ip(&["link", "set", &name, "up"])?;
    Ok(name)
}

/// Creates a tap device in `ns` (for QEMU), up.
pub fn tap(ns: &Netns) -> Result<String> {
    let name = unique_ifname("tap");
    ns.ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
    ns.ip(&["link", "set", &name, "up"])?;
    Ok(name)
}

/// Adds `iface` to `bridge` (both in `ns`).
pub fn enslave(ns: &Netns, iface: &str, bridge: &str) -> Result<()> {
    ns.ip(&["link", "set", iface, "master", bridge]).map(drop)
}

/// Two hosts on one link: a server namespace and a client namespace joined by a veth pair.
/// IPv6 is off in both so nothing but what a test sends crosses the link.
#[derive(Debug)]
pub struct TwoHosts {
    // Field order is drop order: interfaces go with their namespaces.
    pub server: Netns,
    pub client: Netns,
    pub server_if: String,
    pub client_if: String,
    pub subnet: Subnet,
}

impl TwoHosts {
    /// Server at `.1`; the client interface has no address (a machine that has not booted yet).
    pub fn new() -> Result<Self> {
        let server = Netns::new("srv")?;
        let client = Netns::new("cli")?;
        for ns in [&server, &client] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        let (server_if, client_if) = veth_pair(&server, &client)?;
        let subnet = Subnet::allocate();
        server.ip(&["addr", "add", &subnet.cidr(1), "dev", &server_if])?;
        Ok(Self {
            server,
            client,
            server_if,
            client_if,
            subnet,
        })
    }

    pub fn server_ip(&self) -> Ipv4Addr {
        self.subnet.host(1)
    }
}

/// A layer-2 segment: a bridge in a namespace of its own, with hosts plugged in by veth. Models
/// a rack's switch: the boot server, the LAN's own DHCP server and the machines on one link.
#[derive(Debug)]
pub struct Lan {
    pub switch: Netns,
    pub bridge: String,
    pub subnet: Subnet,
}

impl Lan {
    pub fn new() -> Result<Self> {
        let switch = Netns::new("switch")?;
        let bridge = bridge(&switch)?;
        Ok(Self {
            switch,
            bridge,
            subnet: Subnet::allocate(),
        })
    }

    /// A new host namespace plugged into the switch, IPv6 off, optionally addressed as host `n`
    /// of the LAN's subnet. Returns the namespace and its interface name.
    pub fn host(&self, tag: &str, address: Option<u8>) -> Result<(Netns, String)> {
        let ns = Netns::new(tag)?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        let (port, iface) = veth_pair(&self.switch, &ns)?;
        enslave(&self.switch, &port, &self.bridge)?;
        if let Some(n) = address {
            ns.ip(&["addr", "add", &self.subnet.cidr(n), "dev", &iface])?;
        }
        Ok((ns, iface))
    }
}

impl Netns {
    /// Runs `f` on a new thread that has entered this namespace (setns(2) changes the network
    /// namespace of the calling thread only), and returns its result. Sockets it creates live in
    /// the namespace.
    pub fn in_namespace<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).map_err(|source| LabError::Spawn {
            command: format!("open {path}"),
            source,
        })?;
        let handle = thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map(|()| f())
                .map_err(std::io::Error::from)
        });
        match handle.join() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(LabError::Spawn {
                command: format!("setns {}", self.name),
                source,
            }),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout, then stderr.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// `Ok(self)` when the command exited 0, otherwise the failure with its stderr.
    pub fn ok(self) -> Result<Self> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(LabError::Failed {
                command: self.command,
                status: self.status,
                stderr: self.stderr.trim().to_owned(),
            })
        }
    }
}

fn describe(command: &Command) -> String {
    let mut out = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        out.push(' ');
        out.push_str(&arg.to_string_lossy());
    }
    out
}

/// Runs `command` to completion, killing it when `timeout` passes.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Result<Output> {
    let described = describe(&command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| LabError::Spawn {
        command: described.clone(),
        source,
    })?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let status = wait_or_kill(&mut child, timeout, &described)?;
    let collect = |h: Option<thread::JoinHandle<String>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Output {
        command: described,
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Waits for `child` to exit; kills and reaps it when `timeout` passes first.
fn wait_or_kill(child: &mut Child, timeout: Duration, described: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::Timeout {
                    command: described.to_owned(),
                    timeout,
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                return Err(LabError::Spawn {
                    command: described.to_owned(),
                    source,
                });
            }
        }
    }
}

fn drain(mut reader: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A background process, killed (SIGKILL, then reaped) when dropped unless it already exited.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    described: String,
    /// Readers of the piped stdout and stderr, started at spawn: a chatty process (an appliance
    /// logging every boot stage) must never block on a full pipe while the test runs.
    stdout: Option<thread::JoinHandle<String>>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Process {
    /// Spawns with stdout and stderr piped (read them with [`Process::wait_output`]) or as the
    /// caller configured them.
    pub fn spawn(mut command: Command) -> Result<Self> {
        let described = describe(&command);
        command.stdin(Stdio::null());
        let mut child = command.spawn().map_err(|source| LabError::Spawn {
            command: described.clone(),
            source,
        })?;
        Ok(Self {
            stdout: child.stdout.take().map(drain),
            stderr: child.stderr.take().map(drain),
            child: Some(child),
            described,
        })
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. SIGTERM) to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).map_err(|errno| LabError::Spawn {
            command: format!("kill -{signal} {}", child.id()),
            source: errno.into(),
        })
    }

    /// Has it exited? (Non-blocking.)
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to exit and returns what it printed (when its
    /// output was piped). Kills it if it does not exit in time.
    pub fn wait_output(mut self, timeout: Duration) -> Result<Output> {
        let mut child = self.child.take().expect("process not yet waited for");
        let stdout = self.stdout.take();
        let stderr = self.stderr.take();
        let status = wait_or_kill(&mut child, timeout, &self.described)?;
        let collect = |h: Option<thread::JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        Ok(Output {
            command: self.described.clone(),
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes of a [`rng::TestRng`] stream: incompressible, reproducible, different per seed. The payload of
/// the lab's boot files (tests, the demo's peers, the benchmark).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rng::TestRng::new(seed | 1);
    (0..len).map(|_| (rng.next_u64() >> 24) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_stay_in_the_benchmarking_range() {
        for _ in 0..1100 {
            let s = Subnet::allocate();
            let host = s.host(254).octets();
            assert_eq!(host[0], 198);
            assert!(host[1] == 18 || host[1] == 19, "{:?}", s.host(254));
        }
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        for role in ["a", "b", "br", "tap"] {
            let name = unique_ifname(role);
            assert!(name.len() <= 15, "{name}");
            assert_ne!(name, unique_ifname(role), "names are unique");
        }
    }

    #[test]
    fn two_hosts_talk_and_clean_up() {
        if !require!(&["ping"]) {
            return;
        }
        let names;
        {
            let lab = TwoHosts::new().expect("lab");
            lab.client
                .ip(&["addr", "add", &lab.subnet.cidr(2), "dev", &lab.client_if])
                .expect("client address");
            let ping = lab
                .client
                .run(
                    "ping",
                    &["-c", "1", "-W", "2", &lab.server_ip().to_string()],
                    Duration::from_secs(5),
                )
                .expect("ping runs");
            assert!(
                ping.status.success(),
                "ping across the veth failed: {}",
                ping.stdout
            );
            names = [lab.server.name().to_owned(), lab.client.name().to_owned()];
        }
        let list = ip(&["netns", "list"]).expect("netns list");
        for name in names {
            assert!(!list.contains(&name), "{name} left behind: {list}");
        }
    }

    #[test]
    fn namespaces_are_removed_when_a_test_panics() {
        if !require!(&[]) {
            return;
        }
        let name = std::panic::catch_unwind(|| {
            let ns = Netns::new("panic").expect("netns");
            let name = ns.name().to_owned();
            std::panic::panic_any(name);
        })
        .expect_err("the closure panics");
        let name = name
            .downcast::<String>()
            .expect("panic payload is the name");
        let list = ip(&["netns", "list"]).expect("netns list");
        assert!(
            !list.contains(name.as_str()),
            "{name} survived the panic: {list}"
        );
    }

    #[test]
    fn stale_namespaces_of_dead_processes_are_removed() {
        if !require!(&[]) {
            return;
        }
        // PIDs never reach u32::MAX - 1 (pid_max is at most 2^22), so this one is dead.
        let stale = format!("{NETNS_PREFIX}{}-0-stale", u32::MAX - 1);
        ip(&["netns", "add", &stale]).expect("add stale netns");
        let removed = cleanup_stale().expect("cleanup");
        assert!(removed.contains(&stale), "{stale} not removed: {removed:?}");
        let list = ip(&["netns", "list"]).expect("netns list");
        assert!(!list.contains(&stale));
    }

    #[test]
    fn a_test_is_named_by_its_function() {
        assert_eq!(test_name!(), "a_test_is_named_by_its_function");
        let from_a_closure = || test_name!();
        assert_eq!(from_a_closure(), "a_test_is_named_by_its_function");
    }

    #[test]
    fn commands_that_hang_are_killed() {
        let err = run_with_timeout(
            {
                let mut c = Command::new("sleep");
                c.arg("5");
                c
            },
            Duration::from_millis(100),
        )
        .expect_err("times out");
        assert!(matches!(err, LabError::Timeout { .. }), "{err}");
    }
}
