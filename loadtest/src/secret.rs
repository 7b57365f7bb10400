//! Tokens and passwords read from files: kept out of every printout, `Debug` included.

use std::io;
use std::path::Path;

/// A secret string; its `Debug` shows `<redacted>` and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// Wraps a value that must not be printed.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, to put into a request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Why a secret file could not be used. The message names the file but never its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The file holds no non-blank line.
    #[error("{path} is empty")]
    Empty {
        /// The file.
        path: String,
    },
}

/// The first line of `path`, without surrounding whitespace (a trailing newline is usual).
pub fn read_one(path: &Path) -> Result<Secret, SecretFileError> {
    let mut lines = read_lines(path)?;
    // read_lines never returns an empty list.
    Ok(lines.swap_remove(0))
}

/// Every non-blank line of `path`, trimmed; at least one.
pub fn read_lines(path: &Path) -> Result<Vec<Secret>, SecretFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let lines: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(Secret::new)
        .collect();
    if lines.is_empty() {
        return Err(SecretFileError::Empty { path: shown });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2-hunter2-hunter2");
    }

    #[test]
    fn reads_trimmed_non_blank_lines() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(f, "  tok-1\n\n tok-2 \r\n").unwrap();
        let lines = read_lines(f.path()).unwrap();
        let got: Vec<&str> = lines.iter().map(Secret::expose).collect();
        assert_eq!(got, ["tok-1", "tok-2"]);
        assert_eq!(read_one(f.path()).unwrap().expose(), "tok-1");
    }

    #[test]
    fn empty_file_is_an_error_that_names_the_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = read_lines(f.path()).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }
}
