//! Lines for the operator on stdout and stderr. A reader that went away (a pipe closed by a
//! supervisor or by `| head`) must never end the appliance: Rust ignores SIGPIPE, so such a write
//! fails with EPIPE, which `println!` turns into a panic (issue 19: exit 101 at the next stats
//! line, XDP left attached). These write the line or drop it.

/// `println!` that drops the line when stdout cannot take it.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that drops the line when stderr cannot take it.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub(crate) use {say, say_err};

/// Stderr for the log thread: a failed write is dropped (tracing-appender's worker would
/// otherwise report a failed flush with `eprintln!`, which panics on a closed stderr).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().lock().flush();
        Ok(())
    }
}
