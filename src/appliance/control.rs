//! The control plane beside the data plane: its API listener, image store and fleet checks.
use super::*;

/// The control API's address, bound at start: a busy port stops the start before `ready`
/// instead of showing only at shutdown (issue 18).
pub(super) struct ApiListener {
    config: stampede_control::api::ApiConfig,
    listener: std::net::TcpListener,
}

impl ApiListener {
    pub(super) fn bind(config: stampede_control::api::ApiConfig) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(config.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .with_context(|| {
                format!(
                    "the control API cannot listen on {} (--api or server.api; `off` runs \
                     without it)",
                    config.listen
                )
            })?;
        Ok(Self { config, listener })
    }

    /// Serves the API until `shutdown`; call within the runtime.
    pub(super) fn serve(
        self,
        state: stampede_control::ControlState,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<(), stampede_control::api::ServeError>> {
        match (
            &self.config.tls,
            tokio::net::TcpListener::from_std(self.listener),
        ) {
            (None, Ok(listener)) => {
                tokio::spawn(stampede_control::api::serve_on(listener, state, shutdown))
            }
            // HTTPS wraps the listener inside `serve`, which binds its own: the port was free
            // a moment ago and the start's own socket is released just before.
            (Some(_), Ok(listener)) => {
                drop(listener);
                tokio::spawn(stampede_control::api::serve(self.config, state, shutdown))
            }
            (_, Err(_)) => tokio::spawn(stampede_control::api::serve(self.config, state, shutdown)),
        }
    }
}

/// Opens the state and, unless the API is `off`, binds its address (a bad certificate or key,
/// or a busy port, stops the start here, before the state is opened or a token printed).
pub(super) fn control_plane(
    args: &ControlArgs,
    server: &stampede_dataplane::config::ServerSettings,
) -> anyhow::Result<(stampede_control::ControlState, Option<ApiListener>)> {
    let api = args.api.clone().unwrap_or_else(|| server.api.to_string());
    let listen = match api.as_str() {
        "off" => None,
        addr => Some(
            addr.parse()
                .with_context(|| format!("--api {addr:?}: not host:port or off"))?,
        ),
    };
    let tls_files = match (&args.api_cert, &args.api_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => server
            .api_tls
            .as_ref()
            .map(|t| (t.cert.clone(), t.key.clone())),
    };
    let api = match listen {
        None => None,
        Some(listen) => {
            let tls = match tls_files {
                Some((cert, key)) => Some(stampede_control::tls::ApiTls::load(&cert, &key)?),
                None => None,
            };
            Some(ApiListener::bind(stampede_control::api::ApiConfig {
                listen,
                tls,
            })?)
        }
    };
    if let Some(dir) = args.state.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let state = stampede_control::ControlState::open(&args.state, stampede_control::Metrics::new())
        .with_context(|| format!("opening the state file {}", args.state.display()))?;
    let store_dir = match &args.image_store {
        Some(dir) => dir.clone(),
        None => args
            .state
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("images"),
    };
    let store = stampede_dataplane::store::ContentStore::open_dir(&store_dir)
        .with_context(|| format!("opening the image store {}", store_dir.display()))?;
    match store.remove_stale_temporaries() {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed parts of imports cut short by a stop"),
        Err(err) => tracing::warn!(error = %error_chain(&err), "cleaning the image store"),
    }
    state.attach_image_store(Arc::new(ImageStoreAdapter(store)));
    // Root imports build into the same cache as `stampede boot --root`, signed with the same
    // key: `<state dir>/roots`, `<state dir>/manifest.key`.
    let state_dir = args
        .state
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let roots = crate::roots::RootCache::open(state_dir.join("roots"))?;
    let key = crate::roots::appliance_key(state_dir)?;
    state.attach_root_builder(Arc::new(crate::root_images::RootImporter::new(roots, key)));
    if let Some(token) = state.ensure_admin_token_from_env()? {
        // Only its hash is in the state; the token itself only in this file.
        let path = state_dir.join(crate::admin_token::FILE_NAME);
        crate::admin_token::write(&path, &token)?;
        say!(
            "admin token generated: written to {} (mode 0600)",
            path.display()
        );
    }
    Ok((state, api))
}

/// The control plane's imports land in the data plane's content store.
#[derive(Debug)]
pub(super) struct ImageStoreAdapter(stampede_dataplane::store::ContentStore);

impl stampede_control::imports::ImageStore for ImageStoreAdapter {
    fn import(
        &self,
        source: &mut dyn std::io::Read,
        expected: Option<[u8; 32]>,
    ) -> Result<stampede_control::imports::StoredObject, stampede_control::imports::ImageStoreError>
    {
        use stampede_control::imports::{ImageStoreError, StoredObject};
        use stampede_dataplane::store::{Digest, StoreError};
        let expected = expected.map(Digest::from_bytes);
        match self.0.import_reader_expecting(source, expected.as_ref()) {
            Ok(digest) => Ok(StoredObject {
                sha256: *digest.as_bytes(),
                path: self.0.object_path(&digest),
            }),
            Err(StoreError::DigestMismatch { expected, actual }) => {
                Err(ImageStoreError::Mismatch {
                    expected: expected.to_hex(),
                    actual: actual.to_hex(),
                })
            }
            Err(e) => Err(ImageStoreError::Other(Box::new(e))),
        }
    }
}

/// The control plane's check of a candidate fleet: the same merge and `TryFrom` as a reload
/// (`Source::load`), against the configuration as it is on disk now.
pub(super) struct FleetValidation {
    pub(super) source: Arc<Source>,
    pub(super) iface: String,
}

impl std::fmt::Debug for FleetValidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetValidation")
            .field("iface", &self.iface)
            .finish_non_exhaustive()
    }
}

impl stampede_control::validation::FleetValidator for FleetValidation {
    fn validate(&self, fleet: &stampede_control::FleetSnapshot) -> Result<(), String> {
        let config = self
            .source
            .load(Some((fleet, &self.iface)))
            .map_err(|err| error_chain(err.as_ref()))?;
        secure_boot_chain_on_disk(&config)
    }

    /// Also refuses a written profile (new, or changed) whose kernel or initrds are not on
    /// disk: stored, it would be handed to machines that then fail to download it, while the
    /// write said "created" (issue 18). A stored profile whose file goes missing later is the
    /// reload's to report ([`unservable_files`] warns of it), so it blocks no other write.
    fn validate_write(
        &self,
        current: &stampede_control::FleetSnapshot,
        next: &stampede_control::FleetSnapshot,
    ) -> Result<(), String> {
        self.validate(next)?;
        let written: Vec<&String> = next
            .profiles
            .iter()
            .filter(|(name, profile)| current.profiles.get(*name) != Some(*profile))
            .map(|(name, _)| name)
            .collect();
        if written.is_empty() {
            return Ok(());
        }
        let config = self
            .source
            .load(Some((next, &self.iface)))
            .map_err(|err| error_chain(err.as_ref()))?;
        for profile in config
            .profiles
            .iter()
            .filter(|p| written.contains(&&p.name))
        {
            let files = std::iter::once(&profile.boot.default)
                .chain(profile.boot.variants.iter().map(|(_, f)| f));
            for f in files {
                for raw in std::iter::once(&f.kernel).chain(&f.initrds) {
                    let Ok(path) = stampede_proto::bootpath::BootPath::parse(raw.as_bytes()) else {
                        continue;
                    };
                    if let Err(why) = servable_on_disk(&config, &path) {
                        return Err(format!(
                            "profile {:?} boots {path}, which cannot be served ({why}): put the \
                             file in place before writing the profile",
                            profile.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn file_fleet(&self) -> stampede_control::model::FileFleet {
        match &*self.source {
            // A file that no longer parses lists nothing; the next reload says why.
            Source::File(_) => self
                .source
                .load_wire()
                .map(|config| crate::fleet::file_entries(&config))
                .unwrap_or_default(),
            // The command line's entries are not a file's.
            Source::Quick(..) => stampede_control::model::FileFleet::default(),
        }
    }
}

/// A `secure_boot` profile hands out the signed shim and GRUB by name, and a plan whose boot
/// files cannot be opened is not applied: a control-API write that would need them while they
/// are not on disk is refused, naming the file and the package that installs it (found when an
/// API profile with `"secure_boot": "shim"` was stored, then every reload failed on a machine
/// without Debian's shim-signed).
pub(super) fn secure_boot_chain_on_disk(config: &ApplianceConfig) -> Result<(), String> {
    let Some(profile) = config.profiles.iter().find(|p| p.secure_boot.is_some()) else {
        return Ok(());
    };
    for (name, package, key) in [
        (SHIM_NAME, "shim-signed", "boot.shim"),
        (GRUB_NAME, "grub-efi-amd64-signed", "boot.grub"),
    ] {
        let Some(path) = stampede_proto::bootpath::BootPath::parse(name.as_bytes())
            .ok()
            .and_then(|served| config.boot.files.get(&served))
        else {
            continue;
        };
        if !path.is_file() {
            return Err(format!(
                "profile {:?} has secure_boot = \"shim\", which serves {name} from {}: no such \
                 file (install Debian's {package}, or set {key})",
                profile.name,
                path.display()
            ));
        }
    }
    Ok(())
}
