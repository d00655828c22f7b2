//! Where the test venv (Python with `websockets` and `kosoku`) lives.

use std::io;
use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The test venv: `$WSFLEET_VENV` if set and not empty, else `<workspace root>/.venv`.
///
/// `scripts/setup-venv` creates it; `scripts/test` runs that and exports
/// `WSFLEET_VENV`.
pub fn venv() -> PathBuf {
    match std::env::var_os("WSFLEET_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join(".venv"),
    }
}

/// The venv's Python interpreter (it may not exist; see [`require_python`]).
pub fn python() -> PathBuf {
    if cfg!(windows) {
        venv().join("Scripts").join("python.exe")
    } else {
        venv().join("bin").join("python")
    }
}

/// [`python`], after checking that it exists.
///
/// # Errors
///
/// [`io::ErrorKind::NotFound`] when the venv is missing, with a message that says
/// how to create it.
pub fn require_python() -> io::Result<PathBuf> {
    let python = python();
    if python.is_file() {
        Ok(python)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the test venv is missing: no Python at {} ({}); {}",
                python.display(),
                if std::env::var_os("WSFLEET_VENV").is_some() {
                    "from $WSFLEET_VENV"
                } else {
                    "set WSFLEET_VENV to use another venv"
                },
                SETUP_HINT
            ),
        ))
    }
}

/// What to do when the venv is missing or incomplete.
pub(crate) const SETUP_HINT: &str = "run scripts/test (or scripts/setup-venv) first";
