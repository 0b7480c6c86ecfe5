//! The manual pages and shell completions, generated from the command line's own definition
//! (`Cli`), so they cannot drift from the binary they describe. Hidden subcommands rather than
//! an xtask step: the CLI is defined in this binary crate, and an operator can regenerate
//! completions for a shell the package does not cover (`stampede completions elvish`).

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::Cli;

/// `stampede completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    // Into memory first: clap_complete panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "stampede", &mut script);
    std::io::stdout()
        .lock()
        .write_all(&script)
        .context("writing the completions")
}

/// `stampede man`: `stampede(1)` on stdout; with a directory, every visible command's page
/// (`stampede.1`, `stampede-boot.1`, `stampede-ctl-machines-add.1`, ...) into it.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let command = Cli::command();
    match dir {
        None => clap_mangen::Man::new(command)
            .render(&mut std::io::stdout().lock())
            .context("writing the manual page"),
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))
        }
    }
}
