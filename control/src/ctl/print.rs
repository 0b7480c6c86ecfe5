//! What `stampede ctl` shows: tables for people, the API's JSON for scripts, and the lines
//! `watch` and `images import` write as things happen.
use std::io::Write;

use serde::Serialize;

use super::apply::{ApplyReport, EntryKind, PlannedChange};
use super::error::CtlError;
use crate::api_types::{ImportJob, ImportState, PutOutcome, TokenInfo};
use crate::audit::AuditEntry;
use crate::client::Listed;
use crate::leases::{LeaseRecord, LeaseRecordState};
use crate::model::{BootPolicy, BootProfile, Image, ImageKind, Machine};
use crate::sessions::{EventView, SessionSummary, SessionTimeline};
use crate::timestamp::{rfc3339, rfc3339_ms};

/// `serving`, or `quarantined: <why>` for a stored entry the appliance leaves out.
fn quarantine_cell(why: Option<&str>) -> String {
    match why {
        None => "serving".into(),
        Some(why) => format!("quarantined: {why}"),
    }
}

pub(super) fn machine_row(l: &Listed<Machine>) -> Vec<String> {
    let m = &l.item;
    vec![
        m.mac.to_string(),
        m.hostname.clone().unwrap_or_default(),
        m.profile.clone().unwrap_or_default(),
        m.arch.map(|a| a.as_str().to_owned()).unwrap_or_default(),
        match m.boot {
            BootPolicy::Allow => "allow".into(),
            BootPolicy::Deny => "deny".into(),
        },
        m.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        l.source.as_str().to_owned(),
        quarantine_cell(l.quarantined.as_deref()),
    ]
}

pub(super) const MACHINE_HEADER: &[&str] = &[
    "MAC", "HOSTNAME", "PROFILE", "ARCH", "BOOT", "LABELS", "SOURCE", "STATE",
];

pub(super) fn profile_row(l: &Listed<BootProfile>) -> Vec<String> {
    let s = l.item.spec();
    vec![
        s.name.clone(),
        s.root.clone().unwrap_or_default(),
        s.default.kernel.clone(),
        s.default.initrds.join(","),
        s.default.cmdline.clone(),
        s.variants
            .keys()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(","),
        l.source.as_str().to_owned(),
        quarantine_cell(l.quarantined.as_deref()),
    ]
}

pub(super) const PROFILE_HEADER: &[&str] = &[
    "NAME", "ROOT", "KERNEL", "INITRDS", "CMDLINE", "VARIANTS", "SOURCE", "STATE",
];

/// One line of `stampede ctl watch`.
pub fn watch_line(event: &EventView) -> String {
    let mac = event.mac.map_or_else(|| "-".to_owned(), |m| m.to_string());
    format!(
        "{}  {:<17}  {:<21}  {:<13}  {}",
        rfc3339_ms(event.at_unix_ms),
        mac,
        event.client,
        event.kind.name(),
        event.kind.describe()
    )
}

/// One line of `stampede ctl watch` for an image import's progress.
pub fn import_line(job: &ImportJob) -> String {
    let at = job.finished_at_ms.unwrap_or(job.started_at_ms);
    let mut line = format!(
        "{}  image import {} {} {}: {}",
        rfc3339_ms(at),
        job.id,
        job.name,
        state_word(job.state),
        import_progress(job)
    );
    if let Some(sha) = &job.sha256 {
        line.push_str(&format!(" sha256={sha}"));
    }
    if let Some(e) = &job.error {
        line.push_str(&format!(" error={e}"));
    }
    line
}

/// `3 machines, 2 profiles, ..` for a person.
pub(super) fn describe_backup(s: &crate::backup::BackupSummary) -> String {
    format!(
        "{} machines, {} profiles, {} images, {} roots, {} tokens, {} leases, \
         {} audit entries, {} boot sessions",
        s.machines, s.profiles, s.images, s.roots, s.tokens, s.leases, s.audit_entries, s.sessions
    )
}

pub(super) fn state_word(s: ImportState) -> &'static str {
    match s {
        ImportState::Running => "running",
        ImportState::Done => "done",
        ImportState::Failed => "failed",
    }
}

/// `None` when the size is unknown (an HTTP source that did not say).
fn percent(job: &ImportJob) -> Option<u64> {
    let total = job.bytes_total?;
    // An empty source is complete from the start.
    Some(
        (job.bytes_done.min(total) * 100)
            .checked_div(total)
            .unwrap_or(100),
    )
}

/// `1048576/4194304 bytes (25%)`, or `1048576 bytes` when the size is unknown.
pub(super) fn import_progress(job: &ImportJob) -> String {
    match (job.bytes_total, percent(job)) {
        (Some(total), Some(pct)) => format!("{}/{total} bytes ({pct}%)", job.bytes_done),
        _ => format!("{} bytes", job.bytes_done),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One redrawn terminal line: `[#####.....]  45%  28.8/64.0 MiB`.
pub(super) fn progress_bar(job: &ImportJob) -> String {
    const WIDTH: u64 = 30;
    let (Some(pct), Some(total)) = (percent(job), job.bytes_total) else {
        return format!("\r{:.1} MiB", mib(job.bytes_done));
    };
    let filled = (pct * WIDTH / 100) as usize;
    format!(
        "\r[{}{}] {pct:>3}%  {:.1}/{:.1} MiB",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        mib(job.bytes_done),
        mib(total)
    )
}

/// A duration for a person: `38ms`, `12.345s`. Not humantime's `12s 345ms`: that has a space,
/// and scripts split these tables' rows on whitespace.
fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

fn session_row(s: &SessionSummary) -> Vec<String> {
    let outcome = serde_json::to_value(s.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    vec![
        s.mac.to_string(),
        s.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        s.boot.to_string(),
        outcome,
        rfc3339_ms(s.first_unix_ms),
        seconds(s.duration_ms),
        s.stages
            .iter()
            .map(|st| format!("{}:{}", st.stage, st.events))
            .collect::<Vec<_>>()
            .join(" "),
        s.last_event.clone(),
    ]
}

pub(super) fn print_timeline(out: &mut impl Write, t: &SessionTimeline) -> Result<(), CtlError> {
    let s = &t.summary;
    let row = session_row(s);
    writeln!(
        out,
        "{}  ip {}  boot {}  {}  {} over {} events{}",
        row[0],
        if row[1].is_empty() { "-" } else { &row[1] },
        s.boot,
        row[3],
        row[5],
        s.events,
        if s.dropped_events > 0 {
            format!(" ({} dropped)", s.dropped_events)
        } else {
            String::new()
        }
    )?;
    writeln!(out)?;
    let rows = t
        .timeline
        .iter()
        .map(|e| {
            vec![
                rfc3339_ms(e.event.at_unix_ms),
                format!("+{}", seconds(e.since_start_ms)),
                seconds(e.since_prev_ms),
                e.event.kind.name().to_owned(),
                e.event.kind.describe(),
            ]
        })
        .collect();
    print_table(
        out,
        &["TIME", "SINCE START", "WAIT", "EVENT", "DETAIL"],
        rows,
    )?;
    if !s.stages.is_empty() {
        writeln!(out)?;
        let rows = s
            .stages
            .iter()
            .map(|st| {
                vec![
                    st.stage.clone(),
                    seconds(st.last_unix_ms.saturating_sub(st.first_unix_ms)),
                    st.events.to_string(),
                    st.bytes.to_string(),
                    st.failures.to_string(),
                    st.retransmits.to_string(),
                ]
            })
            .collect();
        print_table(
            out,
            &[
                "STAGE",
                "TOOK",
                "EVENTS",
                "BYTES",
                "FAILURES",
                "RETRANSMITS",
            ],
            rows,
        )?;
    }
    for gap in &t.gaps {
        writeln!(
            out,
            "wait {} -> {}: {}",
            gap.from,
            gap.to,
            seconds(gap.gap_ms)
        )?;
    }
    if let Some(w) = &t.longest_wait {
        writeln!(
            out,
            "longest wait: {} before {} {}",
            seconds(w.since_prev_ms),
            w.event.kind.name(),
            w.event.kind.describe()
        )?;
    }
    Ok(())
}

/// [`print_json`] with the RFC 3339 twin of each millisecond time field, as the API answers.
pub(super) fn print_timed_json<T: Serialize + ?Sized>(
    out: &mut impl Write,
    value: &T,
) -> Result<(), CtlError> {
    let value = serde_json::to_value(value).map_err(std::io::Error::from)?;
    print_json(out, &crate::timestamp::with_rfc3339(value))
}

pub(super) fn print_json(out: &mut impl Write, value: &impl Serialize) -> Result<(), CtlError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// `value` as the API's JSON with its RFC 3339 twins for scripts, or as `table` shows it.
pub(super) fn print_timed_or<W: Write, T: Serialize + ?Sized>(
    out: &mut W,
    json: bool,
    value: &T,
    table: impl FnOnce(&mut W, &T) -> Result<(), CtlError>,
) -> Result<(), CtlError> {
    if json {
        return print_timed_json(out, value);
    }
    table(out, value)
}

/// `{"deleted": KEY}` for scripts, `KIND KEY removed` for people.
pub(super) fn print_removed(
    out: &mut impl Write,
    json: bool,
    kind: &str,
    key: &str,
) -> Result<(), CtlError> {
    if json {
        return print_json(out, &serde_json::json!({ "deleted": key }));
    }
    writeln!(out, "{kind} {key} removed")?;
    Ok(())
}

pub(super) fn print_outcome(
    out: &mut impl Write,
    json: bool,
    kind: &str,
    key: &str,
    outcome: PutOutcome,
) -> Result<(), CtlError> {
    if json {
        return print_json(out, &serde_json::json!({ kind: key, "outcome": outcome }));
    }
    writeln!(out, "{kind} {key} {}", outcome.as_str())?;
    Ok(())
}

/// Listed machines or profiles: the API's JSON array, or a table of `row`s.
pub(super) fn print_listed<T: Serialize>(
    out: &mut impl Write,
    json: bool,
    header: &[&str],
    items: &[Listed<T>],
    row: fn(&Listed<T>) -> Vec<String>,
) -> Result<(), CtlError> {
    if json {
        let values: Vec<_> = items.iter().map(Listed::to_json).collect();
        return print_json(out, &values);
    }
    print_table(out, header, items.iter().map(row).collect())
}

/// One listed machine or profile: its JSON object, or a one-row table.
pub(super) fn print_one<T: Serialize>(
    out: &mut impl Write,
    json: bool,
    header: &[&str],
    item: &Listed<T>,
    row: fn(&Listed<T>) -> Vec<String>,
) -> Result<(), CtlError> {
    if json {
        return print_json(out, &item.to_json());
    }
    print_table(out, header, vec![row(item)])
}

/// Left-aligned columns two spaces apart, like `kubectl get`: no borders, no wrapping, each
/// line without trailing blanks, so scripts may split rows on whitespace.
fn print_table(
    out: &mut impl Write,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> Result<(), CtlError> {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_header(header)
        .add_rows(rows);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in table.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `leases list`.
pub(super) fn print_leases(out: &mut impl Write, leases: &[LeaseRecord]) -> Result<(), CtlError> {
    let rows = leases
        .iter()
        .map(|l| {
            vec![
                l.ip.to_string(),
                l.mac.clone(),
                match l.state {
                    LeaseRecordState::Offered => "offered",
                    LeaseRecordState::Bound => "bound",
                    LeaseRecordState::Declined => "declined",
                }
                .to_owned(),
                rfc3339(l.expires_ms),
                l.client.clone(),
            ]
        })
        .collect();
    print_table(out, &["IP", "MAC", "STATE", "EXPIRES", "CLIENT"], rows)
}

/// `tokens list`: never the tokens themselves.
pub(super) fn print_tokens(out: &mut impl Write, tokens: &[TokenInfo]) -> Result<(), CtlError> {
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.role.to_string(),
                rfc3339(t.created_at_ms),
                t.expires_at_ms.map_or_else(|| "never".to_owned(), rfc3339),
            ]
        })
        .collect();
    print_table(out, &["NAME", "ROLE", "CREATED", "EXPIRES"], rows)
}

/// `audit list`.
pub(super) fn print_audit(out: &mut impl Write, entries: &[AuditEntry]) -> Result<(), CtlError> {
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                rfc3339(e.at_ms),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
            ]
        })
        .collect();
    print_table(out, &["SEQ", "TIME", "ACTOR", "ACTION", "TARGET"], rows)
}

/// `images list`: files and diskless roots.
pub(super) fn print_images(out: &mut impl Write, images: &[Image]) -> Result<(), CtlError> {
    let rows = images
        .iter()
        .map(|i| {
            let (kind, detail) = match (&i.kind, &i.root) {
                (ImageKind::Root, Some(r)) => (
                    "root",
                    format!(
                        "root {} kernel {} chunks {} initrd {} bytes",
                        r.root_id, r.kernel_release, r.chunks, r.initrd_bytes
                    ),
                ),
                _ => ("file", i.path.clone()),
            };
            vec![
                i.name.clone(),
                kind.to_owned(),
                format!("sha256:{}", i.sha256),
                i.size.to_string(),
                detail,
            ]
        })
        .collect();
    print_table(out, &["NAME", "KIND", "DIGEST", "BYTES", "DETAIL"], rows)
}

/// `images imports`.
pub(super) fn print_imports(out: &mut impl Write, jobs: &[ImportJob]) -> Result<(), CtlError> {
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.name.clone(),
                j.stage
                    .clone()
                    .unwrap_or_else(|| state_word(j.state).to_owned()),
                import_progress(j),
                j.sha256.clone().unwrap_or_default(),
                j.error.clone().unwrap_or_else(|| j.source.clone()),
            ]
        })
        .collect();
    print_table(
        out,
        &["ID", "NAME", "STATE", "BYTES", "SHA256", "SOURCE/ERROR"],
        rows,
    )
}

/// `sessions`: every machine's latest boot.
pub(super) fn print_sessions(
    out: &mut impl Write,
    sessions: &[SessionSummary],
) -> Result<(), CtlError> {
    let rows = sessions.iter().map(session_row).collect();
    print_table(
        out,
        &[
            "MAC",
            "IP",
            "BOOT",
            "OUTCOME",
            "STARTED",
            "DURATION",
            "STAGES",
            "LAST EVENT",
        ],
        rows,
    )
}

/// `apply --dry-run`: one line per entry.
pub(super) fn print_plan(out: &mut impl Write, plan: &[PlannedChange]) -> Result<(), CtlError> {
    let rows = plan
        .iter()
        .map(|c| {
            vec![
                c.action.as_str().to_owned(),
                match c.kind {
                    EntryKind::Profile => "profile",
                    EntryKind::Machine => "machine",
                }
                .to_owned(),
                c.key.clone(),
            ]
        })
        .collect();
    print_table(out, &["ACTION", "KIND", "NAME"], rows)
}

/// `apply`: what changed, per kind.
pub(super) fn print_apply_report(
    out: &mut impl Write,
    report: &ApplyReport,
) -> Result<(), CtlError> {
    let rows = [("profiles", report.profiles), ("machines", report.machines)]
        .iter()
        .map(|(kind, c)| {
            vec![
                (*kind).to_owned(),
                c.created.to_string(),
                c.updated.to_string(),
                c.unchanged.to_string(),
                c.deleted.to_string(),
            ]
        })
        .collect();
    print_table(
        out,
        &["KIND", "CREATED", "UPDATED", "UNCHANGED", "DELETED"],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_columns_two_spaces_apart_without_trailing_blanks() {
        let mut out = Vec::new();
        print_table(
            &mut out,
            &["IP", "MAC", "STATE"],
            vec![
                vec!["10.0.0.100".into(), String::new(), "bound".into()],
                vec!["10.0.0.7".into(), "52:54:00:00:00:01".into(), "".into()],
            ],
        )
        .expect("writes to memory");
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "IP          MAC                STATE\n\
             10.0.0.100                     bound\n\
             10.0.0.7    52:54:00:00:00:01\n"
        );
        let mut out = Vec::new();
        print_table(&mut out, &["NAME", "ROLE"], vec![]).expect("writes to memory");
        assert_eq!(out, b"NAME  ROLE\n");
    }
}
