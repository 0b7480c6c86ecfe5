//! The appliance: one boot network served from a configuration (a file for `serve --config`,
//! the command line for `boot`), with reload on SIGHUP and a clean stop on SIGINT/SIGTERM.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use stampede_dataplane::{
    boot::BootPlan,
    config::{
        AfXdpChoice, ApplianceConfig, DhcpMode, GRUB_NAME, MacPolicy, QuickBoot, SHIM_NAME,
        network_of, parse_range, wire,
    },
    engine::http::{HttpServer, HttpServerConfig, HttpStats},
    engine::{self, Engine, EngineConfig, Ports, UdpStats},
    sys::afxdp::{XskBind, XskConfig},
    xdp::{AttachMode, XdpClassifier, error_chain},
};
use stampede_ebpf_common::XdpConfig;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    BootArgs, ControlArgs, ServeArgs, check_interval,
    output::{say, say_err},
};

mod classifier;
mod control;
mod host;
pub(crate) mod https;
mod stats;

use classifier::{afxdp_sockets, apply_xdp_policy, attach_classifier};
use control::{FleetValidation, control_plane};
use host::{
    default_route_interface, raise_open_files, warn_if_neighbour_table_small,
    warn_of_other_dhcp_servers,
};
use stats::{format_http_stats, format_stats};

/// Where the configuration comes from, so SIGHUP can read it again.
enum Source {
    File(PathBuf),
    Quick(
        Box<QuickBoot>,
        Option<std::num::NonZeroUsize>,
        wire::RouterAdvertisements,
        wire::AfXdp,
    ),
}

impl Source {
    fn load_wire(&self) -> anyhow::Result<wire::Config> {
        match self {
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                wire::Config::from_toml_str(&text)
                    .with_context(|| format!("{} is not a valid configuration", path.display()))
            }
            Self::Quick(quick, workers, ra, afxdp) => {
                let mut config = ApplianceConfig::quick_wire((**quick).clone())
                    .context("the command line is not usable")?;
                config.server.workers = workers.map(|n| n.get() as u64);
                config.server.router_advertisements = Some(*ra);
                config.xdp.afxdp = *afxdp;
                Ok(config)
            }
        }
    }

    /// The configuration with the control plane's machines and profiles merged in, and the
    /// profiles that name a diskless root resolved against its roots (`iface`'s address is in
    /// the manifests' URLs). Without a fleet, root profiles are placeholders: only for reading
    /// settings before the state is open.
    fn load(
        &self,
        fleet: Option<(&stampede_control::FleetSnapshot, &str)>,
    ) -> anyhow::Result<ApplianceConfig> {
        let mut config = self.load_wire()?;
        let what = match self {
            Self::File(path) => path.display().to_string(),
            Self::Quick(..) => "the command line".into(),
        };
        match fleet {
            Some((fleet, iface)) => {
                crate::fleet::merge(&mut config, fleet);
                crate::root_images::resolve(&mut config, fleet, iface)
                    .with_context(|| format!("{what}: the profiles' diskless roots"))?;
            }
            None => crate::root_images::preview(&mut config),
        }
        let fleet = fleet.map(|(f, _)| f);
        ApplianceConfig::try_from(config).with_context(|| {
            if fleet.is_some_and(|f| !f.machines.is_empty() || !f.profiles.is_empty()) {
                format!("{what}, with the machines and profiles of the control API, is not valid")
            } else {
                format!("{what} is not a valid configuration")
            }
        })
    }
}

pub fn serve_config(args: ServeArgs) -> anyhow::Result<()> {
    let interval = check_interval(args.stats_interval)?;
    let path = args.config.context("--config")?;
    let source = Source::File(path);
    let config = source.load(None)?;
    crate::capabilities::check(&crate::capabilities::Duties::for_config(
        &config,
        &args.control,
    ))?;
    let iface = match args
        .iface
        .or_else(|| config.server.interfaces.first().cloned())
    {
        Some(iface) => iface,
        None => default_route_interface()?,
    };
    if config.server.interfaces.len() > 1 {
        tracing::warn!(
            serving = %iface,
            "several interfaces are configured; this version serves the first one only"
        );
    }
    let xdp = config.xdp;
    run(source, config, iface, xdp, interval, &args.control)
}

/// `stampede serve --check --config FILE`: validates the file as a start would, without the
/// network or the state (which a running appliance holds), and lists every error it finds:
/// the configuration's own, the API certificate and key, and the kernels and initrds the
/// profiles boot. Root images are looked up in the state, so a profile's `root` is not.
pub fn check_config(args: ServeArgs) -> anyhow::Result<()> {
    let path = args.config.context("--check needs --config FILE")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut problems: Vec<String> = Vec::new();
    match wire::Config::from_toml_str(&text) {
        Err(e) => problems.push(e.to_string()),
        Ok(wire) => {
            let wire = wire.with_root_placeholders();
            let errors = ApplianceConfig::all_errors(&wire);
            problems.extend(errors.iter().map(ToString::to_string));
            if errors.is_empty() {
                let config = ApplianceConfig::try_from(wire)?;
                problems.extend(files_of(&config));
            }
        }
    }
    if problems.is_empty() {
        say!("config ok: {}", path.display());
        return Ok(());
    }
    for problem in &problems {
        say_err!("{}: {problem}", path.display());
    }
    bail!(
        "{}: {} error{}",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    )
}

/// What `--check` finds wrong with the files a valid configuration names.
fn files_of(config: &ApplianceConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(tls) = &config.server.api_tls
        && let Err(e) = stampede_control::tls::ApiTls::load(&tls.cert, &tls.key)
    {
        problems.push(format!("server.api_tls_cert: {}", error_chain(&e)));
    }
    let plan = engine::catalogs(config)
        .context("opening the boot files")
        .and_then(|(root, ipxe)| {
            let server_ip = config
                .server
                .address
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            Ok(BootPlan::new(config, server_ip, root, ipxe)?)
        });
    match plan {
        Ok(plan) => problems.extend(unservable_files(config, &plan, |_| false)),
        Err(e) => problems.push(error_chain(e.as_ref())),
    }
    problems
}

pub fn boot(args: BootArgs) -> anyhow::Result<()> {
    crate::capabilities::check(&crate::capabilities::Duties::for_boot(&args))?;
    let interval = check_interval(args.stats_interval)?;
    let dhcp_range = match &args.dhcp_range {
        Some(text) => Some(parse_range(text).with_context(|| format!("--dhcp-range {text:?}"))?),
        None => None,
    };
    let iface = match &args.iface {
        Some(iface) => iface.clone(),
        None if dhcp_range.is_some() => {
            bail!("--dhcp-range needs --iface: authoritative DHCP must know its network")
        }
        None => default_route_interface()?,
    };
    let xdp = match args.xdp_mode.as_str() {
        "off" => None,
        mode => Some(mode.parse::<AttachMode>().map_err(anyhow::Error::msg)?),
    };
    let secure_boot = args
        .secure_boot
        .as_ref()
        .map(|_| stampede_dataplane::config::SecureBoot::Shim);
    if secure_boot.is_some() {
        for (flag, path) in [("--shim", &args.shim), ("--grub", &args.grub)] {
            std::fs::File::open(path)
                .with_context(|| format!("{flag} {}: cannot be opened", path.display()))?;
        }
    }
    let mut quick = QuickBoot {
        iface: Some(iface.clone()),
        kernel: args.kernel.clone().unwrap_or_default(),
        initrds: args.initrds.clone(),
        cmdline: args.cmdline.clone(),
        ipxe_dir: args.ipxe_dir.clone(),
        dhcp_range,
        http_port: args.http_port,
        chainload: args.chainload,
        roots_dir: None,
        secure_boot,
        shim: Some(args.shim.clone()),
        grub: Some(args.grub.clone()),
        https_port: args.https_port,
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        https_boot_urls: args.https_boot_urls,
        // An authoritative range is checked against the interface's network, and takes its
        // prefix.
        link: match dhcp_range {
            Some(_) => Some(engine::interface_ipv4(&iface)?),
            None => None,
        },
    };
    if let Some(source) = &args.root {
        diskless_root(&args, source, &iface, &mut quick)?;
    }
    let workers = match args.workers {
        Some(n) => Some(std::num::NonZeroUsize::new(n).context("--workers must be at least 1")?),
        None => None,
    };
    let ra = match args.router_advertisements.as_str() {
        "auto" => wire::RouterAdvertisements::Auto,
        "off" => wire::RouterAdvertisements::Off,
        other => bail!("--router-advertisements {other:?}: expected auto or off"),
    };
    let afxdp = match args.afxdp.as_str() {
        "off" => wire::AfXdp::Off,
        "auto" => wire::AfXdp::Auto,
        "on" => wire::AfXdp::On,
        other => bail!("--afxdp {other:?}: expected off, auto or on"),
    };
    let source = Source::Quick(Box::new(quick), workers, ra, afxdp);
    let config = source.load(None)?;
    run(source, config, iface, xdp, interval, &args.control)
}

/// `stampede boot --root SOURCE [KERNEL]`: builds (or reuses) the root and makes quick mode boot
/// its kernel and node initramfs, with the manifest's URL on the command line.
fn diskless_root(
    args: &BootArgs,
    source: &str,
    iface: &str,
    quick: &mut QuickBoot,
) -> anyhow::Result<()> {
    if !args.initrds.is_empty() {
        bail!(
            "--root builds the node initramfs itself: give at most a KERNEL, no INITRD ({} given)",
            args.initrds.len()
        );
    }
    let state_dir = args
        .control
        .state
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let cache = crate::roots::RootCache::open(state_dir.join("roots"))?;
    let key = crate::roots::appliance_key(&state_dir)?;
    let credentials = match &args.root_creds {
        Some(text) => {
            let (user, password) = text
                .split_once(':')
                .context("--root-creds must be USER:PASSWORD")?;
            Some((user.to_owned(), password.to_owned()))
        }
        None => None,
    };
    let pull = crate::roots::PullSettings {
        credentials,
        ca_file: args.root_ca.clone(),
        plain_http: args.root_plain_http,
    };
    let built = crate::roots::build(&cache, &key, source, args.kernel.as_deref(), &pull)?;
    // No state records this root: pinned, so collecting unused roots keeps it.
    cache.pin_quick_root(&built.id)?;
    let server_ip = engine::interface_ipv4(iface)?.0;
    let port = args
        .http_port
        .unwrap_or(stampede_dataplane::config::defaults::HTTP_PORT);
    let http_base = format!("http://{server_ip}:{port}");
    quick.kernel = built.kernel.clone();
    quick.initrds = vec![built.initrd.clone()];
    quick.cmdline = format!("{} {}", args.cmdline, built.cmdline(&http_base))
        .trim()
        .to_owned();
    quick.roots_dir = Some(cache.serve());
    say!(
        "root {} name={} image={} kernel={} chunks={} bytes={} initrd_bytes={}",
        built.id,
        built.name,
        built.manifest.image,
        built.kernel_release,
        built.manifest.chunks.len(),
        built.manifest.size,
        built.initrd_bytes
    );
    Ok(())
}

/// The boot plan of `config` on `iface`. A kernel or initrd that a profile of the file or the
/// command line names and that cannot be opened refuses the plan (at start, or the reload);
/// the control API's profiles (`fleet`) may name files imported later, and are only warned of.
/// Whether the file `path` is served from exists as a regular file (inside its directory, links
/// followed, as the server resolves it), without reading it; the reason otherwise.
fn servable_on_disk(
    config: &ApplianceConfig,
    path: &stampede_proto::bootpath::BootPath,
) -> Result<(), String> {
    let Some((file, dir)) = disk_location(config, path) else {
        return Err("no boot.root to serve it from".into());
    };
    let shown = file.display();
    let canonical = std::fs::canonicalize(&file).map_err(|e| format!("{shown}: {e}"))?;
    if let Some(dir) = dir
        && !std::fs::canonicalize(&dir).is_ok_and(|dir| canonical.starts_with(dir))
    {
        return Err(format!("{shown}: leads outside {}", dir.display()));
    }
    match std::fs::metadata(&canonical) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{shown}: not a regular file")),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

fn plan_for(
    config: &ApplianceConfig,
    iface: &str,
    fleet: &stampede_control::FleetSnapshot,
) -> anyhow::Result<Arc<BootPlan>> {
    let (server_ip, link) = match config.server.address {
        Some(ip) => (ip, engine::interface_ipv4(iface).ok()),
        None => {
            let link = engine::interface_ipv4(iface)?;
            (link.0, Some(link))
        }
    };
    // A set `server.address` outside the interface's network (an address the interface does
    // not hold) leaves nothing to check the pools against.
    if let Some((ip, prefix)) = link
        && network_of(server_ip, prefix) == network_of(ip, prefix)
    {
        config.dhcp.check_link(iface, server_ip, prefix)?;
    }
    let (root, ipxe) = engine::catalogs(config).context("opening the boot files")?;
    let plan = BootPlan::new(config, server_ip, root, ipxe).context("building the boot plan")?;
    let unservable = unservable_files(config, &plan, |name| fleet.profiles.contains_key(name));
    if !unservable.is_empty() {
        bail!(
            "{} file{} the profiles boot cannot be opened: {}",
            unservable.len(),
            if unservable.len() == 1 { "" } else { "s" },
            unservable.join("; ")
        );
    }
    warn_if_neighbour_table_small(config);
    Ok(Arc::new(plan))
}

/// The kernels and initrds of `plan` that cannot be opened, one sentence each naming the
/// profile and the file, for the profiles of the file or the command line; those of the control
/// API's profiles (`from_api`) and missing iPXE builds are logged as warnings.
fn unservable_files(
    config: &ApplianceConfig,
    plan: &BootPlan,
    from_api: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut unservable = Vec::new();
    for missing in plan.missing_files() {
        let on_disk = on_disk(config, &missing.path);
        match &missing.profile {
            Some(profile) if !from_api(profile) => unservable.push(format!(
                "profile {profile:?} boots {} ({on_disk}): {}",
                missing.path, missing.error
            )),
            Some(profile) => tracing::warn!(
                %profile,
                path = %missing.path,
                file = %on_disk,
                error = %missing.error,
                "a file this control-API profile boots cannot be opened"
            ),
            None => tracing::warn!(
                loader = %missing.path,
                file = %on_disk,
                error = %missing.error,
                "an iPXE build handed to firmware cannot be opened (boot.ipxe_dir)"
            ),
        }
    }
    unservable
}

/// Where `path` (as a profile or loader names it) is looked for on disk: `boot.files`, else
/// under `boot.root` (loaders: under `boot.ipxe_dir`), for messages.
fn on_disk(config: &ApplianceConfig, path: &stampede_proto::bootpath::BootPath) -> String {
    disk_location(config, path).map_or_else(
        || "no boot.root".into(),
        |(file, _)| file.display().to_string(),
    )
}

/// The file `path` (as a profile or loader names it) is served from, with the directory it must
/// stay inside (none for a file `boot.files` names itself); `None` without a `boot.root`.
fn disk_location(
    config: &ApplianceConfig,
    path: &stampede_proto::bootpath::BootPath,
) -> Option<(PathBuf, Option<PathBuf>)> {
    let loader = [
        &config.boot.loaders.bios,
        &config.boot.loaders.efi_ia32,
        &config.boot.loaders.efi_x64,
        &config.boot.loaders.efi_arm32,
        &config.boot.loaders.efi_arm64,
    ]
    .into_iter()
    .flatten()
    .any(|l| l.as_str() == path.to_string());
    if loader {
        let dir = config.boot.ipxe_dir.clone();
        Some((dir.join(path.to_string()), Some(dir)))
    } else if let Some(file) = config.boot.files.get(path) {
        Some((file.clone(), None))
    } else {
        let dir = config.boot.root.clone()?;
        Some((dir.join(path.to_string()), Some(dir)))
    }
}

fn run(
    source: Source,
    config: ApplianceConfig,
    iface: String,
    xdp: Option<AttachMode>,
    interval: Duration,
    control: &ControlArgs,
) -> anyhow::Result<()> {
    // Before the state is opened or anything listens: a second appliance on this link would
    // answer DHCP beside the first with a lease database of its own.
    let state_dir = control
        .state
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let interface_lock = crate::interface_lock::InterfaceLock::acquire(
        &iface,
        &crate::interface_lock::lock_dirs(state_dir),
    )?;
    tracing::debug!(lock = %interface_lock.path.display(), %iface, "interface locked");
    raise_open_files(&config);
    let (control_state, api_config) = control_plane(control, &config.server)?;
    // API writes are checked by the validation a reload runs; stored entries it refuses are
    // left out (and listed as quarantined) rather than keeping the appliance from starting.
    let source = Arc::new(source);
    let validator = FleetValidation {
        source: Arc::clone(&source),
        iface: iface.clone(),
    };
    for (entry, why) in control_state.attach_fleet_validator(Arc::new(validator)) {
        tracing::error!(
            %entry,
            reason = %why,
            "stored entry quarantined: not served until it is replaced or deleted \
             (stampede ctl machines list / profiles list)"
        );
    }
    // The machines and profiles the control API holds join the configuration's.
    let mut fleet = control_state.subscribe();
    let snapshot = Arc::clone(&fleet.borrow_and_update());
    let config = source.load(Some((&snapshot, &iface)))?;
    let plan = plan_for(&config, &iface, &snapshot)?;
    if config.dhcp.mode == DhcpMode::Authoritative {
        warn_of_other_dhcp_servers(&iface, plan.server_ip());
    }
    let workers = config
        .server
        .workers
        .map(std::num::NonZeroUsize::get)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut classifier = match xdp {
        Some(mode) => attach_classifier(&iface, mode, &config),
        None => None,
    };
    apply_xdp_policy(classifier.as_mut(), &config, "start");
    // Every boot stage goes to the control plane's per-machine sessions (`/api/v1/sessions`,
    // the `/api/v1/events` stream, `stampede ctl watch`).
    let events = stampede_proto::events::Events(Arc::clone(control_state.sessions()) as _);
    // Sessions are saved off the data plane's path, and once more after it stops.
    let session_saver = control_state
        .persist_sessions(stampede_control::sessions::SAVE_INTERVAL)
        .context("starting the boot session saver")?;
    // Machines the XDP program drops by MAC policy are filed as refusals too.
    let _xdp_refusals = classifier.as_mut().and_then(|c| {
        c.report_refusals(events.clone())
            .inspect_err(
                |err| tracing::warn!(error = %error_chain(err), "XDP refusals not reported"),
            )
            .ok()
            .flatten()
    });
    let boot_timings = stampede_control::stage_timing::BootTimings::new(
        control_state.metrics(),
        stampede_control::stage_timing::DEFAULT_SETTLE,
    )
    .run(control_state.sessions().subscribe());
    // Leases live in the state file: an ACK leaves once its lease is durable, and a restart
    // hands nobody an address another machine holds.
    let leases = stampede_control::DurableLeaseStore::open(
        Arc::clone(control_state.db()),
        stampede_control::GroupCommitConfig::default(),
    )
    .context("opening the lease store")?;
    // The swarm's tracker gives peers only to holders of a bound lease (issue 17); the store
    // belongs to the DHCP worker, so the tracker reads a view the store keeps in step.
    let bound_leases = stampede_dataplane::swarm::BoundLeases::of(leases.leases());
    let leases = stampede_dataplane::swarm::LeaseMirror::new(leases, bound_leases.clone());
    let engine_config = EngineConfig {
        iface: Some(iface.clone()),
        workers,
        ports: Ports::default(),
        max_transfers_per_worker: config.tftp.max_transfers.div_ceil(workers),
        events: events.clone(),
    };
    let engine = match afxdp_sockets(config.afxdp, &iface, classifier.as_mut())? {
        Some(sockets) => {
            Engine::start_afxdp(Arc::clone(&plan), engine_config, Box::new(leases), sockets)
        }
        None => Engine::start(Arc::clone(&plan), engine_config, Box::new(leases)),
    }
    .context("starting the engine")?;
    let http_listen = std::net::SocketAddr::new(plan.server_ip().into(), config.server.http_port);
    let current = engine.current_plan();
    // Each root's swarm (issue 17): its torrent and the tracker, answered by the HTTP workers
    // before the boot plan's scripts.
    // With authoritative DHCP only machines holding a lease from this appliance get peers; in
    // proxy mode the appliance hands out no leases, and every client is admitted.
    let mut swarm = stampede_dataplane::swarm::SwarmRoute::new(
        Some(Arc::new(current.clone())),
        config.boot.roots_dir.clone(),
        format!("http://{http_listen}"),
        stampede_proto::tracker::TrackerConfig::default(),
    );
    if matches!(config.dhcp.mode, DhcpMode::Authoritative) {
        swarm = swarm.with_admission(bound_leases.admission());
    }
    let swarm = Arc::new(swarm);
    let http = HttpServer::bind(
        http_listen,
        HttpServerConfig {
            workers,
            max_connections_per_worker: config.http.max_connections.div_ceil(workers),
            http: config.http.server,
            events: events.clone(),
            ..HttpServerConfig::default()
        },
        Arc::new(current.clone()),
        Some(swarm.clone()),
    )
    .with_context(|| format!("starting the HTTP server on {http_listen}"))?;
    let https = match &config.http.https {
        Some(settings) => Some(https::start(
            settings,
            state_dir,
            plan.server_ip(),
            engine::https::HttpsServerConfig {
                // A thread per TLS connection: the plain server's limit (16,384 by default)
                // would be that many threads, so HTTPS keeps its own smaller default.
                max_connections: config
                    .http
                    .max_connections
                    .min(engine::https::HttpsServerConfig::default().max_connections),
                http: config.http.server,
                events,
                ..Default::default()
            },
            Arc::new(current.clone()),
            Some(swarm),
        )?),
        None => None,
    };
    let _router_advertisements = if config.server.router_advertisements {
        match engine::ra::RaResponder::start(&iface, Default::default()) {
            Ok(responder) => Some(responder),
            Err(err) => {
                tracing::warn!(error = %error_chain(&err), "not answering IPv6 router solicitations");
                None
            }
        }
    } else {
        None
    };
    let dhcp = match config.dhcp.mode {
        DhcpMode::Proxy => "proxy",
        DhcpMode::Authoritative => "authoritative",
        DhcpMode::Off => "off",
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // The stop and reload handlers are in place before "ready" is printed: a supervisor that
    // signals as soon as it reads the line must get a clean stop, not the default action.
    let (mut sigint, mut sigterm, mut sighup) = {
        let _runtime = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
            signal(SignalKind::hangup()).context("SIGHUP handler")?,
        )
    };
    say!(
        "ready iface={iface} address={} dhcp={dhcp} tftp=69 http={}{} workers={workers}",
        plan.server_ip(),
        config.server.http_port,
        https.as_ref().map_or(String::new(), |s| format!(
            " https={}",
            s.local_addr().port()
        ))
    );

    runtime.block_on(async {
        let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api = api_config.map(|api| {
            let shutdown = async move {
                let _ = api_stopped.await;
            };
            api.serve(control_state.clone(), shutdown)
        });
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let mut metrics_tick = tokio::time::interval(METRICS_INTERVAL);
        tokio::spawn(boot_timings);
        crate::metrics::publish_build_info(control_state.metrics());
        let current_plan = engine.current_plan();
        loop {
            tokio::select! {
                _ = ticker.tick() => say!(
                    "stats at={} {} {}{}",
                    stampede_control::timestamp::rfc3339(unix_ms_now()),
                    format_stats(&engine.udp_stats()),
                    format_http_stats(&http.stats()),
                    https.as_ref().map_or(String::new(), |s| {
                        format!(" {}", https::format_https_stats(&s.stats()))
                    })
                ),
                _ = metrics_tick.tick() => {
                    let xdp = classifier.as_ref().and_then(|c| {
                        Some(crate::metrics::XdpTotals {
                            classes: c.counters().ok()?,
                            drops: c.drops().ok()?,
                        })
                    });
                    crate::metrics::publish(
                        control_state.metrics(),
                        &engine.udp_stats(),
                        &http.stats(),
                        xdp.as_ref(),
                    );
                    if let Some(https) = &https {
                        crate::metrics::publish_https(control_state.metrics(), &https.stats());
                    }
                    crate::metrics::publish_process(control_state.metrics());
                    let plan = current_plan.get();
                    if let Some(stampede_proto::dhcp::server::ServerMode::Authoritative { pools }) =
                        plan.dhcp_config().map(|c| &c.mode)
                        && let Ok(leases) = control_state.leases()
                    {
                        let now = unix_ms_now();
                        crate::metrics::publish_pools(control_state.metrics(), pools, &leases, now);
                    }
                }
                _ = sighup.recv() => {
                    let snapshot = Arc::clone(&fleet.borrow());
                    let outcome =
                        reload(&engine, classifier.as_mut(), &source, &snapshot, &iface, "SIGHUP");
                    control_state.record_reload(outcome);
                }
                Ok(()) = fleet.changed() => {
                    let snapshot = Arc::clone(&fleet.borrow_and_update());
                    let outcome = reload(
                        &engine,
                        classifier.as_mut(),
                        &source,
                        &snapshot,
                        &iface,
                        "control API",
                    );
                    control_state.record_reload(outcome);
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
        let _ = api_stop.send(());
        if let Some(api) = api {
            match api.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(error = %error_chain(&err), "control API failed"),
                Err(err) => tracing::error!(error = %err, "control API task failed"),
            }
        }
        anyhow::Ok(())
    })?;
    // In-flight downloads get a few seconds to finish; new connections are refused meanwhile.
    let http_stats = http.stop(std::time::Instant::now() + HTTP_STOP_GRACE);
    if let Some(https) = https {
        let stats = https.stop(std::time::Instant::now() + HTTP_STOP_GRACE);
        say!("final https_stats {}", https::format_https_stats(&stats));
    }
    let stats = engine.stop();
    session_saver.stop();
    if let Some(classifier) = classifier.as_mut() {
        match classifier.counters() {
            Ok(counters) => say!("xdp {counters}"),
            Err(err) => tracing::warn!(error = %error_chain(&err), "reading XDP counters"),
        }
        match classifier.drops() {
            Ok(drops) => say!("xdp_drops {drops}"),
            Err(err) => tracing::warn!(error = %error_chain(&err), "reading XDP drop counters"),
        }
        match classifier.steer_counters() {
            Ok(steer) => {
                let line: Vec<String> = stampede_ebpf_common::steer::NAMES
                    .iter()
                    .zip(steer.iter())
                    .map(|(name, c)| format!("{name}={}/{}B", c.packets, c.bytes))
                    .collect();
                say!("xdp_steer {}", line.join(" "));
            }
            Err(err) => tracing::warn!(error = %error_chain(&err), "reading XDP steering counters"),
        }
        classifier.detach()?;
    }
    say!(
        "final stats at={} {} {}",
        stampede_control::timestamp::rfc3339(unix_ms_now()),
        format_stats(&stats),
        format_http_stats(&http_stats)
    );
    Ok(())
}

/// Builds a new plan from the source and the fleet and hands it to the engine, and the new drop
/// policy to the XDP classifier; a refused configuration leaves both as they were and is
/// returned, for health and metrics.
fn reload(
    engine: &Engine,
    classifier: Option<&mut XdpClassifier>,
    source: &Source,
    fleet: &stampede_control::FleetSnapshot,
    iface: &str,
    why: &str,
) -> Result<(), String> {
    let loaded = source
        .load(Some((fleet, iface)))
        .and_then(|c| Ok((plan_for(&c, iface, fleet)?, c)));
    match loaded {
        Ok((plan, config)) => {
            engine.reload(plan);
            apply_xdp_policy(classifier, &config, why);
            tracing::info!(
                trigger = why,
                generation = fleet.generation,
                "configuration reloaded"
            );
            Ok(())
        }
        Err(err) => {
            let error = error_chain(err.as_ref());
            tracing::error!(
                trigger = why,
                error = %error,
                "reload refused; still serving the previous configuration"
            );
            Err(error)
        }
    }
}

/// How often the data plane's counters are copied into `/metrics`.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long a stopping appliance lets HTTP responses in progress finish: a 100 MiB initrd at
/// 100 Mbit/s takes 8 s; longer transfers are cut and counted (`http_aborted_at_stop`).
const HTTP_STOP_GRACE: Duration = Duration::from_secs(10);
