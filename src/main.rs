//! `stampede`: the network-boot appliance's one binary.
use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use stampede_dataplane::xdp::{AttachMode, XdpClassifier, error_chain};
use stampede_ebpf_common::XdpConfig;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "stampede",
    version,
    about = "Network-boot appliance: boots whole racks at once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach the XDP boot-traffic classifier to an interface and report what it sees.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Interface the boot network is on.
    #[arg(long)]
    iface: String,
    /// XDP attach mode: auto (native, falling back to generic), native or generic.
    #[arg(long, default_value = "auto")]
    xdp_mode: AttachMode,
    /// TCP port HTTP boot is served on (counted as HTTP by the classifier).
    #[arg(long, default_value_t = XdpConfig::DEFAULT_HTTP_PORT)]
    http_port: u16,
    /// Seconds between counter reports on stdout.
    #[arg(long, default_value_t = 5.0)]
    stats_interval: f64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stampede: {}", error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if !(args.stats_interval.is_finite() && args.stats_interval >= 0.1) {
        anyhow::bail!(
            "--stats-interval must be at least 0.1 seconds, got {}",
            args.stats_interval
        );
    }
    let mut classifier =
        XdpClassifier::load(XdpConfig::new(args.http_port)).context("loading the classifier")?;
    let attachment = classifier.attach(&args.iface, args.xdp_mode)?;
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
    println!(
        "attached iface={} mode={}",
        attachment.iface, attachment.mode
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(args.stats_interval));
        ticker.tick().await;
        let signal_name = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let counters = classifier.counters()?;
                    println!("counters {counters}");
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
    println!("final counters {counters}");
    println!("detached iface={}", args.iface);
    Ok(())
}
