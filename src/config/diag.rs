//! Load diagnostics: every problem in a config or rule file names the file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a file, 1-based; `line == 0` means "the file as a whole".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    pub fn of(loc: &serde_saphyr::Location) -> Self {
        Pos {
            line: loc.line(),
            column: loc.column(),
        }
    }
}

/// One load error: `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.pos.line,
                self.pos.column,
                self.message
            )
        }
    }
}

/// All the errors of one load, in file order; a load with any error loads nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, file: &Path, pos: Pos, message: impl Into<String>) {
        self.0.push(Diagnostic {
            file: file.to_path_buf(),
            pos,
            message: message.into(),
        });
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
    /// `Ok(value)` when nothing was reported, else all the diagnostics.
    pub fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Parses one YAML file into `T`, turning a syntax, type, unknown-key or duplicate-key error
/// into a diagnostic with its position.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, Diagnostics> {
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let pos = e.location().map(|l| Pos::of(&l)).unwrap_or_default();
        let mut d = Diagnostics::default();
        d.push(file, pos, first_line(&e.to_string()));
        d
    })
}

/// serde-saphyr renders a multi-line snippet; the first line carries the reason.
fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid YAML")
        .to_string()
}

/// Reads a file, reporting a missing or unreadable file as a diagnostic.
pub fn read_file(file: &Path) -> Result<String, Diagnostics> {
    std::fs::read_to_string(file).map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(file, Pos::default(), format!("cannot read file: {e}"));
        d
    })
}
