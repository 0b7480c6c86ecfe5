//! Each `stampede ctl` command: the calls it makes to the API and what it prints of the
//! answers.
use std::collections::BTreeMap;
use std::io::Write;

use reqwest::StatusCode;

use super::apply::FleetFile;
use super::args::{
    AuditCommand, CaCommand, CtlArgs, CtlCommand, ImagesCommand, LeasesCommand, MachinesCommand,
    ProfilesCommand, TokensCommand, WatchArgs,
};
use super::error::CtlError;
use super::print::{
    MACHINE_HEADER, PROFILE_HEADER, describe_backup, import_line, import_progress, machine_row,
    print_apply_report, print_audit, print_images, print_imports, print_json, print_leases,
    print_listed, print_one, print_outcome, print_plan, print_removed, print_sessions,
    print_timed_json, print_timed_or, print_timeline, print_tokens, profile_row, progress_bar,
    state_word, watch_line,
};
use crate::api_types::{ImportJob, ImportRequest, ImportState, NewToken, PutOutcome};
use crate::client::{Client, ClientError};
use crate::model::{
    BootPolicy, BootProfile, BootTarget, Machine, MachineSpec, ProfileSpec, SecureBootChain,
};

/// The 404 `GET /api/v1/COLLECTION/KEY` answers, for an entry `ctl` looked for in the list
/// (which also says where an entry is declared and whether it serves).
fn not_listed(collection: &str, kind: &str, key: &str) -> ClientError {
    ClientError::Api {
        method: "GET",
        path: format!("/api/v1/{collection}/{key}"),
        status: StatusCode::NOT_FOUND,
        message: format!("{kind} {key} not found"),
    }
}

/// `--token` or STAMPEDE_TOKEN (clap reads both into `flag`), else the server's
/// STAMPEDE_ADMIN_TOKEN: an operator who exported the one the appliance started with needs no
/// second variable.
fn token_or(flag: Option<String>, admin_env: Option<String>) -> Option<String> {
    let given = |t: Option<String>| t.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    given(flag).or_else(|| given(admin_env))
}

/// `tty`: `out` is a terminal, so progress may redraw one line.
pub(super) async fn run_with(
    args: CtlArgs,
    out: &mut impl Write,
    tty: bool,
) -> Result<(), CtlError> {
    if let CtlCommand::Restore { state, file } = &args.command {
        // Offline, and so without a token.
        return restore_offline(state, file, args.json, out);
    }
    if let CtlCommand::Ca(CaCommand::Show { state }) = &args.command {
        return ca_show(state, out);
    }
    let token = token_or(
        args.token.clone(),
        std::env::var(crate::ADMIN_TOKEN_ENV).ok(),
    )
    .ok_or(CtlError::NoToken)?;
    let client = Client::with_cacert(&args.url, &token, args.cacert.as_deref())?;
    match args.command {
        CtlCommand::Machines(MachinesCommand::List { selector }) => {
            let machines = client.machines_listed(selector.as_ref()).await?;
            print_listed(out, args.json, MACHINE_HEADER, &machines, machine_row)
        }
        CtlCommand::Machines(MachinesCommand::Get { mac }) => {
            let mac: crate::model::MacAddr =
                mac.parse().map_err(crate::model::ValidationError::Mac)?;
            // From the list, which also says where the machine is declared and whether it
            // serves; a machine of the configuration file has no API resource of its own.
            let machine = client
                .machines_listed(None)
                .await?
                .into_iter()
                .find(|l| l.item.mac == mac)
                .ok_or_else(|| not_listed("machines", "machine", &mac.to_string()))?;
            print_one(out, args.json, MACHINE_HEADER, &machine, machine_row)
        }
        CtlCommand::Machines(MachinesCommand::Add {
            mac,
            profile,
            hostname,
            uuid,
            arch,
            labels,
            deny,
            ssh_keys,
        }) => {
            let spec = MachineSpec {
                mac,
                uuid,
                arch,
                hostname,
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                profile,
                boot: if deny {
                    BootPolicy::Deny
                } else {
                    BootPolicy::Allow
                },
                ssh_authorized_keys: ssh_keys,
            };
            // Validate here so a typo gets a local message, not a round trip.
            let machine = Machine::try_from(spec.clone())?;
            let outcome = client.put_machine(&spec).await?;
            print_outcome(out, args.json, "machine", &machine.mac.to_string(), outcome)
        }
        CtlCommand::Machines(MachinesCommand::Rm { mac }) => {
            client.delete_machine(&mac).await?;
            print_removed(out, args.json, "machine", &mac)
        }
        CtlCommand::Profiles(ProfilesCommand::List) => {
            let profiles = client.profiles_listed().await?;
            print_listed(out, args.json, PROFILE_HEADER, &profiles, profile_row)
        }
        CtlCommand::Profiles(ProfilesCommand::Get { name }) => {
            let profile = client
                .profiles_listed()
                .await?
                .into_iter()
                .find(|l| l.item.name() == name)
                .ok_or_else(|| not_listed("profiles", "profile", &name))?;
            print_one(out, args.json, PROFILE_HEADER, &profile, profile_row)
        }
        CtlCommand::Profiles(ProfilesCommand::Rm { name }) => {
            client.delete_profile(&name).await?;
            print_removed(out, args.json, "profile", &name)
        }
        CtlCommand::Leases(LeasesCommand::List) => {
            let leases = client.leases().await?;
            print_timed_or(out, args.json, leases.as_slice(), print_leases)
        }
        CtlCommand::Tokens(TokensCommand::List) => {
            let tokens = client.tokens().await?;
            print_timed_or(out, args.json, tokens.as_slice(), print_tokens)
        }
        CtlCommand::Tokens(TokensCommand::Create {
            name,
            role,
            expires_in,
        }) => {
            let issued = client
                .create_token(&NewToken {
                    name,
                    role,
                    expires_in_s: expires_in,
                })
                .await?;
            if args.json {
                return print_json(out, &issued);
            }
            // The token alone on stdout, so `TOKEN=$(stampede ctl tokens create ...)` works.
            writeln!(out, "{}", issued.token)?;
            Ok(())
        }
        CtlCommand::Tokens(TokensCommand::Revoke { name }) => {
            client.revoke_token(&name).await?;
            if args.json {
                return print_json(out, &serde_json::json!({ "revoked": name }));
            }
            writeln!(out, "token {name} revoked")?;
            Ok(())
        }
        CtlCommand::Audit(AuditCommand::List { after, limit }) => {
            let entries = client.audit_entries(after, limit).await?;
            print_timed_or(out, args.json, entries.as_slice(), print_audit)
        }
        CtlCommand::Profiles(ProfilesCommand::Add {
            name,
            root,
            kernel,
            initrds,
            cmdline,
            ipxe_template,
            secure_boot,
        }) => {
            let ipxe_template = match ipxe_template {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|source| CtlError::ReadFile { path, source })?,
                ),
                None => None,
            };
            let spec = ProfileSpec {
                name,
                root,
                default: BootTarget {
                    kernel,
                    initrds,
                    cmdline,
                },
                ipxe_template,
                variants: BTreeMap::new(),
                secure_boot: secure_boot.as_deref().and_then(SecureBootChain::from_name),
            };
            BootProfile::try_from(spec.clone())?;
            let outcome = client.put_profile(&spec).await?;
            print_outcome(out, args.json, "profile", &spec.name, outcome)
        }
        CtlCommand::Watch(watch_args) => watch(&client, watch_args, args.json, out).await,
        CtlCommand::Images(ImagesCommand::List) => {
            let images = client.images().await?;
            print_timed_or(out, args.json, images.as_slice(), print_images)
        }
        CtlCommand::Images(ImagesCommand::Imports) => {
            let jobs = client.imports().await?;
            print_timed_or(out, args.json, jobs.as_slice(), print_imports)
        }
        CtlCommand::Images(ImagesCommand::Rm { name }) => {
            client.delete_image(&name).await?;
            print_removed(out, args.json, "image", &name)
        }
        CtlCommand::Images(ImagesCommand::Import {
            args: positional,
            name,
            sha256,
            ca,
            creds,
            plain_http,
            detach,
        }) => {
            let (name, source) = match <[String; 2]>::try_from(positional) {
                Ok([_, _]) if name.is_some() => {
                    return Err(CtlError::Usage(
                        "give the name once: `import SOURCE --name NAME` or `import NAME SOURCE`"
                            .into(),
                    ));
                }
                Ok([legacy_name, source]) => (Some(legacy_name), source),
                Err(mut one) => (name, one.pop().unwrap_or_default()),
            };
            let ca_pem = match ca {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|source| CtlError::ReadFile { path, source })?,
                ),
                None => None,
            };
            // Credentials from the environment are for registries only: a file import with
            // STAMPEDE_REGISTRY_CREDS set must not fail for it.
            let credentials = creds.filter(|_| source.starts_with("docker://"));
            let req = ImportRequest {
                name,
                source,
                sha256,
                ca_pem,
                credentials,
                plain_http,
            };
            let job = client.start_import(&req).await?;
            if detach {
                return print_timed_json(out, &job);
            }
            follow_import(&client, job, args.json, tty, out).await
        }
        CtlCommand::Backup { file } => {
            let summary = client.backup_to(&file).await?;
            if args.json {
                return print_json(out, &summary);
            }
            writeln!(
                out,
                "backup written to {}: {}",
                file.display(),
                describe_backup(&summary)
            )?;
            Ok(())
        }
        CtlCommand::Restore { state, file } => restore_offline(&state, &file, args.json, out),
        CtlCommand::Ca(CaCommand::Show { state }) => ca_show(&state, out),
        CtlCommand::Sessions { mac: None } => {
            let sessions = client.sessions().await?;
            print_timed_or(out, args.json, sessions.as_slice(), print_sessions)
        }
        CtlCommand::Sessions { mac: Some(mac) } => {
            let timeline = client.session(&mac).await?;
            print_timed_or(out, args.json, &timeline, print_timeline)
        }
        CtlCommand::Audit(AuditCommand::Verify) => {
            let report = client.verify_audit().await?;
            if args.json {
                print_json(out, &report)?;
            } else if report.is_intact() {
                writeln!(
                    out,
                    "audit log intact: {} entries, head {}",
                    report.entries, report.head_hash
                )?;
            }
            match report.problem {
                Some(problem) => Err(CtlError::AuditDamaged(problem)),
                None => Ok(()),
            }
        }
        CtlCommand::Apply {
            file,
            dry_run: true,
            prune,
        } => {
            let fleet = FleetFile::parse(&file)?;
            let plan = client.plan(&fleet, prune).await?;
            if args.json {
                return print_json(out, &plan);
            }
            print_plan(out, &plan)
        }
        CtlCommand::Apply {
            file,
            dry_run: false,
            prune,
        } => {
            let fleet = FleetFile::parse(&file)?;
            let report = client.apply_pruning(&fleet, prune).await?;
            if args.json {
                return print_json(out, &report);
            }
            print_apply_report(out, &report)
        }
    }
}

/// How often `ctl images import` asks how far the import is.
const IMPORT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Line mode prints at most one progress line per this interval.
const IMPORT_LINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Polls the job until it ends, showing progress; fails if the import failed.
async fn follow_import(
    client: &Client,
    mut job: ImportJob,
    json: bool,
    tty: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let mut last_line: Option<std::time::Instant> = None;
    let mut last_shown = None;
    loop {
        let shown = (job.bytes_done, job.state, job.stage.clone());
        if !json && last_shown.as_ref() != Some(&shown) {
            if tty {
                let stage = job.stage.as_deref().unwrap_or_default();
                write!(out, "{}  {stage:<9}", progress_bar(&job))?;
                out.flush()?;
                last_shown = Some(shown);
            } else if job.state != ImportState::Running
                || last_line.is_none_or(|t| t.elapsed() >= IMPORT_LINE_INTERVAL)
            {
                let word = match (&job.stage, job.state) {
                    (Some(stage), ImportState::Running) => stage.as_str(),
                    _ => state_word(job.state),
                };
                writeln!(out, "import {} {word}: {}", job.id, import_progress(&job))?;
                out.flush()?;
                last_line = Some(std::time::Instant::now());
                last_shown = Some(shown);
            }
        }
        if job.state != ImportState::Running {
            break;
        }
        tokio::time::sleep(IMPORT_POLL).await;
        job = client.import(job.id).await?;
    }
    if json {
        print_timed_json(out, &job)?;
    } else {
        if tty {
            writeln!(out)?;
        }
        if job.state == ImportState::Done
            && let Some(root) = &job.root
        {
            let outcome = match job.outcome {
                Some(PutOutcome::Unchanged) => "unchanged",
                Some(PutOutcome::Updated) => "replaced",
                _ => "stored",
            };
            writeln!(
                out,
                "root {} image {} root {} kernel {} chunks {} ({} bytes) {outcome}",
                job.name, root.image, root.root_id, root.kernel_release, root.chunks, root.bytes
            )?;
        } else if job.state == ImportState::Done {
            let outcome = match job.outcome {
                Some(PutOutcome::Unchanged) => "already in the store",
                _ => "stored",
            };
            writeln!(
                out,
                "image {} sha256 {} ({} bytes) {outcome}",
                job.name,
                job.sha256.as_deref().unwrap_or("?"),
                job.bytes_done
            )?;
        }
    }
    match job.state {
        ImportState::Failed => Err(CtlError::ImportFailed {
            id: job.id,
            error: job.error.unwrap_or_default(),
        }),
        _ => Ok(()),
    }
}

/// One event of `watch` (`data`, the API's JSON of a `T`): as a JSON line with its RFC 3339
/// twins, or as `line` shows it to a person; flushed, so a pipe sees it at once.
fn print_watched<T: serde::de::DeserializeOwned + serde::Serialize>(
    out: &mut impl Write,
    json: bool,
    data: &str,
    line: fn(&T) -> String,
) -> Result<(), CtlError> {
    let value: T =
        serde_json::from_str(data).map_err(|e| CtlError::BadEvent(format!("{e}: {data}")))?;
    if json {
        let value = serde_json::to_value(&value).map_err(std::io::Error::from)?;
        let value = crate::timestamp::with_rfc3339(value);
        serde_json::to_writer(&mut *out, &value).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", line(&value))?;
    }
    out.flush()?;
    Ok(())
}

async fn watch(
    client: &Client,
    args: WatchArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let deadline = match args.timeout {
        Some(t) if t.is_finite() && t >= 0.0 => {
            Some(tokio::time::Instant::now() + std::time::Duration::from_secs_f64(t))
        }
        Some(t) => return Err(CtlError::BadTimeout(t)),
        None => None,
    };
    let mut stream = client.events(args.mac.as_deref()).await?;
    let mut seen = 0;
    while args.count.is_none_or(|n| seen < n) {
        let next = async {
            tokio::select! {
                m = stream.next() => m,
                _ = tokio::signal::ctrl_c() => Ok(None),
            }
        };
        let message = match deadline {
            Some(d) => match tokio::time::timeout_at(d, next).await {
                Ok(m) => m?,
                Err(_) => break,
            },
            None => next.await?,
        };
        let Some(message) = message else { break };
        if message.event == "lagged" {
            writeln!(out, "# fell behind: {}", message.data)?;
            out.flush()?;
            continue;
        }
        if message.event == "image_import" {
            print_watched(out, json, &message.data, import_line)?;
        } else {
            print_watched(out, json, &message.data, watch_line)?;
        }
        seen += 1;
    }
    match (args.count, args.timeout) {
        (Some(wanted), Some(timeout_s)) if seen < wanted => Err(CtlError::WatchTimeout {
            timeout_s,
            seen,
            wanted,
        }),
        _ => Ok(()),
    }
}

/// `ctl restore`: the backup replaces the state file, not through the API (see
/// [`crate::backup`] for why).
/// `ctl ca show`: the CA certificate from `<state dir>/ca/ca.pem`, as stored.
fn ca_show(state: &std::path::Path, out: &mut impl Write) -> Result<(), CtlError> {
    let dir = state
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let path = dir.join("ca").join(crate::ca::CA_CERT);
    let pem = std::fs::read_to_string(&path).map_err(|source| CtlError::ReadFile {
        path: path.clone(),
        source,
    })?;
    out.write_all(pem.as_bytes())?;
    Ok(())
}

fn restore_offline(
    state: &std::path::Path,
    file: &std::path::Path,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let report = crate::backup::restore(file, state)?;
    if json {
        return print_json(out, &report);
    }
    writeln!(
        out,
        "restored {} from {}: {}",
        report.state.display(),
        file.display(),
        describe_backup(&report.restored)
    )?;
    if let Some(previous) = &report.previous {
        writeln!(out, "the replaced state is kept as {}", previous.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_flag_then_the_servers_variable() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(token_or(some("flag"), some("admin")), some("flag"));
        assert_eq!(token_or(None, some("admin")), some("admin"));
        // An empty STAMPEDE_TOKEN is no token: the next source is read.
        assert_eq!(token_or(some(" "), some("admin")), some("admin"));
        assert_eq!(token_or(None, None), None);
    }
}
