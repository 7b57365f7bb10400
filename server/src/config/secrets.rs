//! Secrets from the environment: `NAME` or the file named by `NAME_FILE` (the convention of
//! Kubernetes secret mounts, Docker secrets and the Vault agent), and the `.env` file.

use std::collections::HashMap;
use std::path::Path;

use zeroize::Zeroizing;

use super::{ConfigError, EnvSource, invalid};

/// Secret material is small; a larger file is a mistake and is not read whole.
const MAX_SECRET_FILE_LEN: u64 = 64 * 1024;

/// The secret in `name`, or in the file `name_FILE` names (one trailing newline trimmed);
/// one of them, not both. The value is never part of an error.
pub(super) fn secret(
    env: &dyn EnvSource,
    name: &str,
) -> Result<Option<Zeroizing<String>>, ConfigError> {
    let file_var = format!("{name}_FILE");
    match (
        env.non_empty(name).map(Zeroizing::new),
        env.non_empty(&file_var),
    ) {
        (Some(_), Some(_)) => Err(invalid(
            format!("{name} / {file_var}"),
            "set one of them, not both",
        )),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => {
            let text = read_small(Path::new(&path))
                .map_err(|e| invalid(&file_var, format!("cannot read {path}: {e}")))?;
            let trimmed = text.strip_suffix('\n').unwrap_or(&text);
            let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
            Ok(Some(Zeroizing::new(trimmed.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// Reads a file of secret material as text, refusing anything larger than a secret can be.
pub(super) fn read_small(path: &Path) -> std::io::Result<Zeroizing<String>> {
    let mut bytes = crate::secret_files::read_capped(path, MAX_SECRET_FILE_LEN)?;
    // Moved, not copied, into the string; on failure the bytes are wiped with `bytes`.
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            *bytes = e.into_bytes();
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8 text",
            ))
        }
    }
}

/// Variables from a `.env` file, consulted after the process environment (which wins).
#[derive(Default)]
pub struct DotEnv {
    vars: HashMap<String, Zeroizing<String>>,
}

impl std::fmt::Debug for DotEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("DotEnv").field("names", &names).finish()
    }
}

impl DotEnv {
    /// Loads `path` if it exists. It holds secrets, so it is refused (with a message saying
    /// how to fix it) when group or others may read it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = || format!("{}", path.display());
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(invalid(origin(), e)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(invalid(
                    origin(),
                    format!(
                        "is readable by group or others (mode {mode:o}) and may hold secrets; \
                         refusing to read it (fix with: chmod 600 {})",
                        path.display()
                    ),
                ));
            }
        }
        let mut vars = HashMap::new();
        let entries = dotenvy::from_path_iter(path).map_err(|e| invalid(origin(), e))?;
        for entry in entries {
            // dotenvy's errors name the line, never its value.
            let (name, value) = entry.map_err(|e| invalid(origin(), e))?;
            vars.insert(name, Zeroizing::new(value));
        }
        Ok(Self { vars })
    }
}

/// The process environment first, then a `.env` file.
#[derive(Debug)]
pub struct WithDotEnv<E> {
    /// Wins over the file.
    pub primary: E,
    /// Fills in what `primary` lacks.
    pub dotenv: DotEnv,
}

impl<E: EnvSource> EnvSource for WithDotEnv<E> {
    fn var(&self, name: &str) -> Option<String> {
        self.primary
            .var(name)
            .or_else(|| self.dotenv.vars.get(name).map(|v| v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_secret_comes_from_the_variable_or_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-file\n").unwrap();
        let file = path.to_str().unwrap();
        let got = secret(&env(&[("PW", "direct")]), "PW").unwrap().unwrap();
        assert_eq!(got.as_str(), "direct");
        let got = secret(&env(&[("PW_FILE", file)]), "PW").unwrap().unwrap();
        assert_eq!(got.as_str(), "from-file");
        assert!(secret(&env(&[]), "PW").unwrap().is_none());
        let both = secret(&env(&[("PW", "direct"), ("PW_FILE", file)]), "PW").unwrap_err();
        assert!(!both.to_string().contains("direct"), "{both}");
        let missing = secret(&env(&[("PW_FILE", "/nonexistent/pw")]), "PW").unwrap_err();
        assert!(missing.to_string().contains("PW_FILE"), "{missing}");
    }

    #[cfg(unix)]
    #[test]
    fn a_dotenv_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "PORTCULLIS_ADMIN_TOKEN=dotenv-token-0123456789\nA=1\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = DotEnv::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("chmod 600") && !e.contains("dotenv-token"),
            "{e}"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let layered = WithDotEnv {
            primary: env(&[("A", "process")]),
            dotenv: DotEnv::load(&path).unwrap(),
        };
        assert_eq!(
            layered.var("A").as_deref(),
            Some("process"),
            "the process wins"
        );
        assert_eq!(
            layered.var("PORTCULLIS_ADMIN_TOKEN").as_deref(),
            Some("dotenv-token-0123456789")
        );
        assert!(!format!("{layered:?}").contains("dotenv-token"));
        assert!(DotEnv::load(&dir.path().join("absent")).is_ok());
    }
}
