//! `stampede ctl`'s command line.
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::auth::Role;
use crate::model::{Arch, LabelSelector};

/// The environment variable ctl takes its token from.
pub const TOKEN_ENV: &str = "STAMPEDE_TOKEN";

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// Control API base URL.
    #[arg(
        long,
        env = "STAMPEDE_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub url: String,
    /// Bearer token. Without it, STAMPEDE_TOKEN is read, then STAMPEDE_ADMIN_TOKEN (the
    /// variable `serve` and `boot` take their first admin token from), so one exported variable
    /// serves both.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM file of the CA(s) that signed the API's certificate (an `https://` URL); only these
    /// are trusted then. Without it, the system's trust store is used.
    #[arg(long, env = "STAMPEDE_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM) to hand to firmware and clients (`curl --cacert`).
    Show {
        /// The appliance's state file (as `serve --state`); the CA is in `ca/` beside it.
        #[arg(long, default_value = "/var/lib/stampede/stampede.redb")]
        state: PathBuf,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Machines known to the appliance.
    #[command(subcommand)]
    Machines(MachinesCommand),
    /// Boot profiles.
    #[command(subcommand)]
    Profiles(ProfilesCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// DHCP leases.
    #[command(subcommand)]
    Leases(LeasesCommand),
    /// API tokens (needs an admin token).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Declare profiles and machines from a TOML file; applying it again changes nothing.
    /// Entries not in the file are left alone unless `--prune` is given.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print what would change (create, update, unchanged, delete per entry), change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the API's machines and profiles the file does not declare (entries of
        /// the appliance's configuration file are never touched).
        #[arg(long)]
        prune: bool,
    },
    /// Follow boots live: one line per DHCP reply, TFTP transfer and HTTP response (and image
    /// import progress), until Ctrl-C, `--count` events or `--timeout` seconds.
    Watch(WatchArgs),
    /// Images in the appliance's store.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Boot sessions: every machine's latest boot, or with MAC that machine's timeline (each
    /// event, the wait before it, the gaps between stages).
    Sessions {
        /// aa:bb:cc:dd:ee:ff
        mac: Option<String>,
    },
    /// Copy the appliance's state (machines, profiles, images, leases, tokens, audit log, boot
    /// sessions) to FILE while it serves: one consistent snapshot, itself a state file (needs an
    /// admin token; audited).
    Backup {
        /// Where to write the copy (replaced if it exists, once the copy is whole and checked).
        file: PathBuf,
    },
    /// The appliance CA that signs the HTTPS boot certificate (`http.https_port`): `ca show`
    /// prints it (PEM), read from the state directory, offline and without a token.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Put a backup in place as the state file, offline: refused while an appliance holds the
    /// state file. The replaced file is kept as STATE.before-restore. Needs no token.
    Restore {
        /// The state file to replace (as `serve --state`).
        #[arg(long, default_value = "/var/lib/stampede/stampede.redb")]
        state: PathBuf,
        /// A file written by `stampede ctl backup`.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ImagesCommand {
    /// Files in the content store and diskless roots.
    List,
    /// Import SOURCE, showing progress until it is done (a bar on a terminal, lines otherwise;
    /// `--json`: the finished job). An OCI image (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
    /// `docker-archive:FILE`, `docker://REGISTRY/REPO:TAG`) becomes a diskless root a profile
    /// names with `root = "NAME"`; a file on the appliance or an http(s):// URL is copied into
    /// the content store. `import NAME SOURCE` is the older spelling of `import SOURCE --name
    /// NAME`.
    Import {
        /// SOURCE, or NAME SOURCE.
        #[arg(required = true, num_args = 1..=2, value_name = "SOURCE")]
        args: Vec<String>,
        /// The image's name (needed for files and URLs; a root defaults to its source's
        /// `repo:tag` or file name). Importing a root name again replaces what it points to.
        #[arg(long)]
        name: Option<String>,
        /// Files and URLs: fail, storing nothing, unless the content has this SHA-256 (hex).
        #[arg(long)]
        sha256: Option<String>,
        /// docker:// sources: trust the CA certificates in this PEM file for the registry's
        /// https (read here, sent to the appliance).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// docker:// sources: the registry's user and password.
        #[arg(
            long,
            value_name = "USER:PASSWORD",
            env = "STAMPEDE_REGISTRY_CREDS",
            hide_env_values = true
        )]
        creds: Option<String>,
        /// docker:// sources: speak plain http to the registry.
        #[arg(long)]
        plain_http: bool,
        /// Start the import and print its job without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// Imports this appliance has run since it started.
    Imports,
    /// Forget an image: a root by name, or a file by its SHA-256. A root's served files stay on
    /// disk (no garbage collection yet).
    #[command(visible_alias = "delete")]
    Rm {
        /// Root name or file SHA-256.
        name: String,
    },
}

#[derive(Debug, Clone, Default, Args)]
pub struct WatchArgs {
    /// Only this machine (aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    pub mac: Option<String>,
    /// Stop after this many events; fewer before `--timeout` is an error.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum MachinesCommand {
    List {
        /// Only machines whose labels match: `key=value`, `key!=value`, `key`, `!key`,
        /// comma-separated, all must hold (e.g. `-l rack=r1,role=db`).
        #[arg(short = 'l', long, value_name = "SELECTOR")]
        selector: Option<LabelSelector>,
    },
    /// One machine.
    Get { mac: String },
    /// Add or replace a machine.
    Add {
        mac: String,
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long)]
        uuid: Option<String>,
        #[arg(long, value_parser = parse_arch)]
        arch: Option<Arch>,
        /// `key=value`, repeatable (key: letters, digits, `._/-`; value: letters, digits,
        /// `._-`; at most 63 bytes each).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Known but not allowed to boot.
        #[arg(long)]
        deny: bool,
        /// A line for root's `authorized_keys` on a diskless machine (repeat for several).
        #[arg(long = "ssh-key", value_name = "KEY")]
        ssh_keys: Vec<String>,
    },
    #[command(visible_alias = "delete")]
    Rm { mac: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ProfilesCommand {
    List,
    /// One profile.
    Get {
        name: String,
    },
    /// Remove a profile no machine boots.
    #[command(visible_alias = "delete")]
    Rm {
        name: String,
    },
    /// Add or replace a profile.
    Add {
        name: String,
        /// Boot this diskless root (an imported root's name, or sha256:DIGEST); the kernel
        /// defaults to the root's own.
        #[arg(long)]
        root: Option<String>,
        /// The kernel (needed without --root; with it, overrides the root's kernel and must
        /// be of the same release).
        #[arg(long, required_unless_present = "root", default_value = "")]
        kernel: String,
        /// Repeatable, in load order.
        #[arg(long = "initrd")]
        initrds: Vec<String>,
        #[arg(long, default_value = "")]
        cmdline: String,
        /// File holding an iPXE script template.
        #[arg(long)]
        ipxe_template: Option<PathBuf>,
        /// x86-64 UEFI machines with Secure Boot get the distribution's signed chain (shim,
        /// GRUB, the profile's signed kernel) instead of iPXE.
        #[arg(long, value_name = "CHAIN", value_parser = ["shim"])]
        secure_boot: Option<String>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; exits with an error if anything was edited or removed.
    Verify,
    /// Audit entries, oldest first.
    List {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many entries (the API's cap is 1000).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum LeasesCommand {
    /// Committed leases: address, machine, state and expiry.
    List,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokensCommand {
    /// Tokens by name and role (never the tokens themselves).
    List,
    /// Issue a token; it is printed once and cannot be shown again.
    Create {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// How long until it stops authenticating: seconds (`86400`) or a duration (`24h`,
        /// `90d`, `1h 30m`); without it, it lasts until revoked.
        #[arg(long, value_name = "DURATION", value_parser = parse_expiry)]
        expires_in: Option<u64>,
    },
    /// Revoke a token by name.
    #[command(visible_alias = "rm")]
    Revoke { name: String },
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!("unknown arch {s:?} (x86_bios, efi_ia32, efi_x64, efi_arm32, efi_arm64)")
    })
}

/// Whole seconds, from a bare number of seconds (as the flag always took) or a humantime
/// duration; a fraction of a second rounds up, so a short expiry never becomes none.
fn parse_expiry(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is neither seconds nor a duration like 24h or 90d: {e}"))?;
    Ok(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_seconds_or_a_duration() {
        assert_eq!(parse_expiry("86400"), Ok(86_400));
        assert_eq!(parse_expiry("24h"), Ok(86_400));
        assert_eq!(parse_expiry("1h 30m"), Ok(5_400));
        assert_eq!(parse_expiry("90d"), Ok(90 * 86_400));
        assert_eq!(parse_expiry("1500ms"), Ok(2));
        assert!(parse_expiry("soon").is_err());
        assert!(parse_expiry("-5").is_err());
    }
}
