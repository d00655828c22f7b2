//! Figures and checks of one run: a table for people, a verdict for scripts.

use std::fmt::Write as _;

/// What a scenario measured and what it found wrong.
#[derive(Debug, Default)]
pub(crate) struct Report {
    title: String,
    rows: Vec<(String, String)>,
    violations: Vec<String>,
}

impl Report {
    pub(crate) fn new(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            ..Self::default()
        }
    }

    /// One figure for the summary table.
    pub(crate) fn figure(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.rows.push((name.into(), value.into()));
    }

    /// A check: when `ok` is false, `what` is reported as a violation.
    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.violations.push(what());
        }
    }

    pub(crate) fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub(crate) fn print(&self) {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "\n== {} ==", self.title);
        for (k, v) in &self.rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        if self.violations.is_empty() {
            let _ = writeln!(out, "  -> PASS");
        } else {
            for v in &self.violations {
                let _ = writeln!(out, "  VIOLATION: {v}");
            }
            let _ = writeln!(out, "  -> FAIL ({} violations)", self.violations.len());
        }
        print!("{out}");
    }
}

/// Bytes as MiB with one decimal.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// Bytes as KiB with one decimal.
pub(crate) fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}
