//! Writing results without ever leaving a half-written file, and mapping errors to exit codes.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Bad input data (EX_DATAERR): the file is at fault, not the machine.
pub const EXIT_BAD_INPUT: u8 = 65;

/// An error that blames the input rather than the environment.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Arguments that parse but do not make sense together (exit 2, like clap's own usage errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<Usage>()) {
        2
    } else if e.chain().any(|c| c.is::<BadInput>()) {
        EXIT_BAD_INPUT
    } else {
        1
    }
}

/// Writes `bytes` to `out`, or to stdout when `out` is `None`. A file is written beside its final
/// name and renamed into place, so a crash never leaves a partial result behind.
pub fn write_output(out: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    write_output_with(out, |w| w.write_all(bytes))
}

/// Like [`write_output`], with the bytes written by `write` into a buffered writer, so a large
/// result streams to its file instead of being built in memory first.
pub fn write_output_with(out: Option<&Path>, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> anyhow::Result<()> {
    let Some(path) = out else {
        let mut stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        return write(&mut stdout).and_then(|()| stdout.flush()).context("writing to stdout");
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().context("output path has no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        write(&mut f)?;
        let f = f.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}
