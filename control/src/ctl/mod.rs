//! `stampede ctl`: a client of the control API for people and scripts.
//!
//! The binary embeds [`CtlArgs`] as a subcommand and calls [`run`]. Output is a table unless
//! `--json` is given, in which case it is the API's JSON unchanged.
//!
//! `args` is the command line, `calls` runs each command through a [`crate::client::Client`],
//! `print` shows the answers, and `apply` declares a [`FleetFile`].
use std::io::Write;

mod apply;
mod args;
mod calls;
mod error;
mod print;

pub use apply::{ApplyAction, ApplyCounts, ApplyReport, EntryKind, FleetFile, PlannedChange};
pub use args::{
    AuditCommand, CaCommand, CtlArgs, CtlCommand, ImagesCommand, LeasesCommand, MachinesCommand,
    ProfilesCommand, TOKEN_ENV, TokensCommand, WatchArgs,
};
pub use error::CtlError;
pub use print::{import_line, watch_line};

/// Runs one `stampede ctl` command, printing to stdout.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    if matches!(
        args.command,
        CtlCommand::Watch(_) | CtlCommand::Images(ImagesCommand::Import { .. })
    ) {
        // Lines must appear as events arrive, not when the command ends.
        use std::io::IsTerminal as _;
        let tty = std::io::stdout().is_terminal();
        return calls::run_with(args, &mut std::io::stdout(), tty).await;
    }
    let mut out = Vec::new();
    let result = run_to(args, &mut out).await;
    std::io::stdout().write_all(&out)?;
    result
}

/// [`run`] writing to `out` (tests read what a person would see).
pub async fn run_to(args: CtlArgs, out: &mut impl Write) -> Result<(), CtlError> {
    calls::run_with(args, out, false).await
}
