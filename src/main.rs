//! `stampede`: the network-boot appliance's one binary.
use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use stampede_dataplane::xdp::{AttachMode, XdpClassifier, error_chain};
use stampede_ebpf_common::XdpConfig;
use tokio::signal::unix::{SignalKind, signal};

mod admin_token;
mod appliance;
mod bench;
mod capabilities;
mod dhcp_probe;
mod fleet;
mod interface_lock;
mod manual;
mod metrics;
mod output;
mod root_images;
mod roots;

use output::{say, say_err};

#[derive(Debug, Parser)]
#[command(
    name = "stampede",
    version,
    about = "Network-boot appliance: boots whole racks at once"
)]
struct Cli {
    /// How log lines are written to stderr: `plain` for a person or the journal (no colour
    /// unless stderr is a terminal outside the journal), `json` for a log pipeline (one object a
    /// line, the message in `fields.message`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Plain,
        env = "STAMPEDE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

/// Colour only for a person at a terminal: not into a pipe or file, not into the journal
/// (systemd sets `JOURNAL_STREAM` for a service whose stderr it reads, systemd.exec(5)), and
/// not when `NO_COLOR` is set (no-color.org).
fn log_in_colour(stderr_is_terminal: bool, env: impl Fn(&str) -> bool) -> bool {
    stderr_is_terminal && !env("JOURNAL_STREAM") && !env("NO_COLOR")
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the boot network described by a config file (`--config`); with only `--iface`,
    /// attach the XDP boot-traffic classifier and report what it sees.
    Serve(ServeArgs),
    /// Quick mode: boot every machine on the network into KERNEL and INITRDs, no config file.
    Boot(Box<BootArgs>),
    /// Drive a running appliance through its control API.
    Ctl(stampede_control::ctl::CtlArgs),
    /// Measure a boot server (Stampede or a peer) under the load of a deployment.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Shell completions for SHELL on stdout (the Debian package installs bash, zsh and fish).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// The manual page (roff) on stdout; with `--dir DIR`, one page per command into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// `--state`: a file path. A URL (anything with `://`) would otherwise be taken as a relative
/// path and create a directory such as `postgres:/` (issue 18).
fn parse_state_path(text: &str) -> Result<std::path::PathBuf, String> {
    if text.contains("://") {
        return Err(format!(
            "{text:?} is a URL: PostgreSQL state is not supported by this version; --state takes \
             a file path (one redb file, e.g. /var/lib/stampede/stampede.redb)"
        ));
    }
    Ok(text.into())
}

/// The control API and its state, shared by `serve` and `boot`.
#[derive(Debug, Clone, clap::Args)]
struct ControlArgs {
    /// Address the control API listens on, or `off` [default: the config's `server.api`, else
    /// 127.0.0.1:7070; loopback because without a certificate the API is plain HTTP].
    #[arg(long)]
    api: Option<String>,
    /// Serve the API over HTTPS with this PEM certificate chain (leaf first); needs
    /// `--api-key` [default: the config's `server.api_tls_cert`].
    #[arg(long, requires = "api_key", value_name = "PEM")]
    api_cert: Option<std::path::PathBuf>,
    /// The private key of `--api-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "api_cert", value_name = "PEM")]
    api_key: Option<std::path::PathBuf>,
    /// The appliance's state (machines, profiles, images, leases, audit log): one redb file.
    #[arg(long, default_value = "/var/lib/stampede/stampede.redb", value_parser = parse_state_path)]
    state: std::path::PathBuf,
    /// Where imported images are kept, content-addressed by SHA-256 [default: `images/` beside
    /// the state file].
    #[arg(long, value_name = "DIR")]
    image_store: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The appliance's TOML configuration (see docs/stampede.example.toml).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Interface the boot network is on (overrides the config's `server.interfaces`).
    #[arg(long, required_unless_present = "config")]
    iface: Option<String>,
    /// XDP attach mode: auto (native, falling back to generic), native or generic.
    #[arg(long, default_value = "auto")]
    xdp_mode: AttachMode,
    /// TCP port HTTP boot is served on (counted as HTTP by the classifier).
    #[arg(long, default_value_t = XdpConfig::DEFAULT_HTTP_PORT)]
    http_port: u16,
    /// Seconds between counter reports on stdout.
    #[arg(long, default_value_t = 5.0)]
    stats_interval: f64,
    /// Check the configuration (`--config`) and exit, as `nginx -t` does: every error is
    /// listed, and the exit status is non-zero if there is any. Nothing is bound or attached.
    #[arg(long, requires = "config")]
    check: bool,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
struct BootArgs {
    /// Interface the machines boot on; default: the interface of the default route.
    #[arg(long)]
    iface: Option<String>,
    /// Be the authoritative DHCP server for this range (START-END) on the interface's subnet;
    /// without it, answer as ProxyDHCP beside the network's own DHCP server.
    #[arg(long, value_name = "START-END")]
    dhcp_range: Option<String>,
    /// Kernel command line; {mac} {uuid} {ip} {hostname} {arch} are filled in per machine.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Where the iPXE builds handed to firmware are (undionly.kpxe, snponly.efi).
    #[arg(long)]
    ipxe_dir: Option<std::path::PathBuf>,
    /// HTTP port for iPXE scripts, kernels and initrds.
    #[arg(long)]
    http_port: Option<u16>,
    /// Also serve the same files over HTTPS on this port, with a certificate the appliance CA
    /// (`<state dir>/ca/ca.pem`) issues for the boot address, unless --tls-cert is given.
    #[arg(long, value_name = "PORT")]
    https_port: Option<u16>,
    /// With --https-port: the operator's certificate chain (PEM) instead of the appliance CA's.
    #[arg(long, requires_all = ["https_port", "tls_key"], value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// With --tls-cert: its private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// With --https-port: DHCP boot-file URLs (UEFI HTTP Boot) and iPXE scripts name files by
    /// `https://` (the client must trust the certificate; plain HTTP keeps serving).
    #[arg(long, requires = "https_port")]
    https_boot_urls: bool,
    /// Chainload: an iPXE running from a NIC's option ROM gets undionly.kpxe by TFTP, and
    /// that iPXE gets the script (`boot.ipxe_chainload` in a config file).
    #[arg(long)]
    chainload: bool,
    /// Secure Boot: `shim` hands x86-64 UEFI PXE machines the signed shim, which loads the
    /// signed GRUB netboot image, which boots KERNEL (signed) with a generated grub.cfg.
    /// Firmware does not tell DHCP whether Secure Boot is on: this flag decides.
    #[arg(long, value_name = "CHAIN", value_parser = ["shim"])]
    secure_boot: Option<String>,
    /// With --secure-boot: the signed shim (Debian's shim-signed).
    #[arg(long, requires = "secure_boot", value_name = "FILE",
          default_value = stampede_dataplane::config::defaults::SHIM)]
    shim: std::path::PathBuf,
    /// With --secure-boot: the signed GRUB netboot image (Debian's grub-efi-amd64-signed).
    #[arg(long, requires = "secure_boot", value_name = "FILE",
          default_value = stampede_dataplane::config::defaults::GRUB)]
    grub: std::path::PathBuf,
    /// Worker threads (one io_uring each); default: one per core.
    #[arg(long)]
    workers: Option<usize>,
    /// XDP classifier: auto, native, generic or off.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// Serve DHCP and TFTP through AF_XDP sockets (`xdp.afxdp`): off, auto (falls back to
    /// io_uring sockets, saying why) or on.
    #[arg(long, default_value = "off")]
    afxdp: String,
    /// IPv6 router solicitations: auto answers them with an empty RA where no other router
    /// speaks (firmware then stops waiting for IPv6); off never does.
    #[arg(long, default_value = "auto")]
    router_advertisements: String,
    /// Seconds between counter reports on stdout.
    #[arg(long, default_value_t = 10.0)]
    stats_interval: f64,
    #[command(flatten)]
    control: ControlArgs,
    /// Boot every machine diskless into this OCI image: `oci:DIR[:TAG]`,
    /// `oci-archive:FILE[:TAG]`, `docker-archive:FILE` or `docker://REGISTRY/REPO:TAG`. The
    /// kernel is the image's own (`/boot/vmlinuz-*`) unless KERNEL is given; Stampede builds
    /// the node initramfs (no INITRD arguments).
    #[arg(long, value_name = "SOURCE")]
    root: Option<String>,
    /// `docker://` sources: credentials for the registry (USER:PASSWORD).
    #[arg(
        long,
        requires = "root",
        value_name = "USER:PASSWORD",
        env = "STAMPEDE_REGISTRY_CREDS"
    )]
    root_creds: Option<String>,
    /// `docker://` sources: trust this CA (PEM) for the registry's https.
    #[arg(long, requires = "root", value_name = "PEM")]
    root_ca: Option<std::path::PathBuf>,
    /// `docker://` sources: speak plain http to the registry (never without this flag).
    #[arg(long, requires = "root")]
    root_plain_http: bool,
    /// The kernel every machine boots (with `--root`: overrides the image's own kernel; its
    /// modules must be in the image).
    #[arg(required_unless_present = "root")]
    kernel: Option<std::path::PathBuf>,
    /// Initrds, in order.
    initrds: Vec<std::path::PathBuf>,
}

/// The log goes to stderr through a thread of its own: the data-plane workers log every boot
/// stage, and a slow or stalled reader of stderr (a full pipe, a paused terminal) must never
/// stall them. Lines beyond the 128 Ki buffered are dropped and counted (`log_lines_dropped` in
/// the final line), which is the right trade for a boot appliance in a storm.
fn log_writer() -> tracing_appender::non_blocking::NonBlocking {
    LOG.get_or_init(|| {
        let (writer, guard) = tracing_appender::non_blocking(output::Stderr);
        // Never dropped: the worker thread lives as long as the process; `main` flushes it.
        LOG_GUARD.set(std::sync::Mutex::new(Some(guard))).ok();
        writer
    })
    .clone()
}

static LOG: std::sync::OnceLock<tracing_appender::non_blocking::NonBlocking> =
    std::sync::OnceLock::new();
static LOG_GUARD: std::sync::OnceLock<
    std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>>,
> = std::sync::OnceLock::new();

/// Writes out buffered log lines (before exit) and says how many were dropped, if any.
fn flush_log() {
    let dropped = LOG.get().map_or(0, |w| w.error_counter().dropped_lines());
    if let Some(guard) = LOG_GUARD.get() {
        // Dropping the guard flushes and joins the log thread.
        drop(guard.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
    if dropped > 0 {
        say_err!("stampede: log_lines_dropped={dropped} (stderr was not read fast enough)");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer);
    match cli.log_format {
        LogFormat::Json => log.json().init(),
        LogFormat::Plain => {
            let env_set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
            let colour = log_in_colour(std::io::stderr().is_terminal(), env_set);
            if env_set("JOURNAL_STREAM") {
                // The journal stamps every line itself.
                log.with_ansi(false).without_time().init();
            } else {
                log.with_ansi(colour).init();
            }
        }
    }
    let result = match cli.command {
        Command::Serve(args) if args.check => appliance::check_config(args),
        Command::Serve(args) if args.config.is_some() => appliance::serve_config(args),
        Command::Serve(args) => serve(args),
        Command::Boot(args) => appliance::boot(*args),
        Command::Ctl(args) => ctl(args),
        Command::Bench(command) => bench::run(command),
        Command::Completions { shell } => manual::completions(shell),
        Command::Man { dir } => manual::man(dir.as_deref()),
    };
    flush_log();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            say_err!("stampede: {}", error_chain(err.as_ref()));
            if err.is::<capabilities::MissingCapabilities>() {
                ExitCode::from(capabilities::MissingCapabilities::EXIT_STATUS)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn ctl(args: stampede_control::ctl::CtlArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(stampede_control::ctl::run(args))?;
    Ok(())
}

fn check_interval(seconds: f64) -> anyhow::Result<Duration> {
    if !(seconds.is_finite() && seconds >= 0.1) {
        anyhow::bail!("--stats-interval must be at least 0.1 seconds, got {seconds}");
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// XDP classifier only: attach, print counters, detach on SIGINT/SIGTERM.
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    capabilities::check(&capabilities::Duties::classifier_only())?;
    let interval = check_interval(args.stats_interval)?;
    let iface = args.iface.context("--iface is required without --config")?;
    // The classifier would replace the XDP program of an appliance serving this interface.
    let state_dir = args
        .control
        .state
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let _interface_lock =
        interface_lock::InterfaceLock::acquire(&iface, &interface_lock::lock_dirs(state_dir))?;
    // The stop handlers are in place before XDP is attached: a signal that arrives as soon as
    // the program shows on the interface must detach it, not kill the process with it attached.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let (mut sigint, mut sigterm) = {
        let _runtime = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
        )
    };
    let mut classifier =
        XdpClassifier::load(XdpConfig::new(args.http_port)).context("loading the classifier")?;
    let attachment = classifier.attach(&iface, args.xdp_mode)?;
    match &attachment.fallback_reason {
        None => {
            tracing::info!(iface = %attachment.iface, mode = %attachment.mode, "XDP classifier attached")
        }
        Some(reason) => tracing::warn!(
            iface = %attachment.iface,
            mode = %attachment.mode,
            native_error = %reason,
            "native XDP unavailable on this interface, attached in generic mode"
        ),
    }
    // Printed once attached, so scripts and tests know when traffic starts being counted.
    say!(
        "attached iface={} mode={}",
        attachment.iface,
        attachment.mode
    );

    runtime.block_on(async {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let signal_name = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let counters = classifier.counters()?;
                    say!("counters {counters}");
                }
                _ = sigint.recv() => break "SIGINT",
                _ = sigterm.recv() => break "SIGTERM",
            }
        };
        tracing::info!(signal = signal_name, "stopping");
        anyhow::Ok(())
    })?;
    let counters = classifier.counters()?;
    classifier.detach()?;
    say!("final counters {counters}");
    say!("detached iface={iface}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_a_person_at_a_terminal() {
        let none = |_: &str| false;
        assert!(log_in_colour(true, none));
        assert!(!log_in_colour(false, none), "a pipe or a file");
        assert!(
            !log_in_colour(true, |v| v == "JOURNAL_STREAM"),
            "the journal"
        );
        assert!(!log_in_colour(true, |v| v == "NO_COLOR"));
    }

    #[test]
    fn the_log_format_is_a_global_flag() {
        let cli = Cli::try_parse_from(["stampede", "boot", "--log-format", "json", "vmlinuz"])
            .expect("parses");
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = Cli::try_parse_from(["stampede", "--log-format", "plain", "boot", "vmlinuz"])
            .expect("parses");
        assert_eq!(cli.log_format, LogFormat::Plain);
        assert!(Cli::try_parse_from(["stampede", "--log-format", "xml", "boot", "k"]).is_err());
    }
}
