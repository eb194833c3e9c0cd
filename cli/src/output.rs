//! How a release is printed: `--format table|json|arrow` (and `--json`, kept as the short form
//! of `--format json`).

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};

/// The output format of a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table for people.
    Table,
    /// One JSON object.
    Json,
    /// An Arrow IPC stream on stdout (binary: redirect it to a file or a pipe).
    Arrow,
}

/// The format asked for by `--format` and `--json` together.
pub fn resolve(format: Option<Format>, json: bool) -> anyhow::Result<Format> {
    match (format, json) {
        (Some(Format::Json) | None, true) => Ok(Format::Json),
        (Some(other), true) => bail!(
            "--json and --format {} ask for two formats; keep one",
            match other {
                Format::Table => "table",
                Format::Arrow => "arrow",
                Format::Json => "json",
            }
        ),
        (Some(format), false) => Ok(format),
        (None, false) => Ok(Format::Table),
    }
}

/// Writes an Arrow IPC stream to stdout, refusing a terminal (it is binary).
pub fn write_arrow(bytes: &[u8]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        bail!(
            "--format arrow writes a binary Arrow IPC stream; redirect stdout to a file \
             (> result.arrows) or a pipe"
        );
    }
    let mut lock = stdout.lock();
    lock.write_all(bytes)
        .and_then(|()| lock.flush())
        .context("writing the Arrow stream to stdout")
}
