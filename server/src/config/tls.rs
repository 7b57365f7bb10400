//! The `[tls]` settings: the gRPC port's certificate and key, the client CA that turns on mTLS,
//! and whether plaintext is refused outright.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::settings::{REQUIRE_TLS, TLS_CERT, TLS_CLIENT_CA, TLS_KEY};
use super::{ConfigError, EnvSource, duration_setting, invalid, pick};

/// How often the certificate files are checked for changes unless `tls.reload_poll` says.
const DEFAULT_RELOAD_POLL: Duration = Duration::from_secs(1);
/// Longest TLS handshake unless `tls.handshake_timeout` says.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A file named by a setting, with the setting it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    /// The file.
    pub path: PathBuf,
    /// The flag, variable or file key that named it, e.g. `--tls-key`.
    pub origin: String,
}

/// The gRPC port's TLS material: file paths only, read (and re-read on change) by the server.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: TlsFile,
    /// PEM private key of the leaf certificate (secret material: never echoed).
    pub key: TlsFile,
    /// PEM CA bundle; when set, every client must present a certificate it issued (mTLS).
    pub client_ca: Option<TlsFile>,
}

/// Transport security settings, validated.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// TLS on the gRPC port; `None` serves plaintext.
    pub server: Option<ServerTls>,
    /// `--require-tls`: starting without TLS is an error (so `server` is then always set).
    pub require: bool,
    /// How often the certificate, key and client CA files are checked for changes.
    pub reload_poll: Duration,
    /// Longest TLS handshake before the connection is dropped.
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            server: None,
            require: false,
            reload_poll: DEFAULT_RELOAD_POLL,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// The TLS flags, flattened into the command line.
#[derive(Debug, Default, clap::Args)]
pub(super) struct TlsFlags {
    /// PEM certificate chain for gRPC over TLS, reloaded when it changes
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert (PKCS#8, RSA or EC), reloaded with it
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// PEM CA bundle: clients must present a certificate it issued (mTLS)
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<String>,
    /// Refuse to start without TLS on the gRPC port
    #[arg(long)]
    require_tls: bool,
}

/// The `[tls]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsSection {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    require: Option<bool>,
    reload_poll: Option<String>,
    handshake_timeout: Option<String>,
}

/// Where to set the certificate, for messages.
const SET_CERT: &str = "set --tls-cert and --tls-key (PORTCULLIS_TLS_CERT / PORTCULLIS_TLS_KEY, \
                        or tls.cert / tls.key in the config file)";

fn file_setting(value: Option<(String, String)>) -> Result<Option<TlsFile>, ConfigError> {
    match value {
        None => Ok(None),
        Some((path, origin)) if path.trim().is_empty() => {
            Err(invalid(origin, "is empty; name a PEM file"))
        }
        Some((path, origin)) => Ok(Some(TlsFile {
            path: PathBuf::from(path),
            origin,
        })),
    }
}

fn bool_text(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl TlsConfig {
    /// Resolves flags, environment and file (in that order of precedence).
    pub(super) fn resolve(
        flags: TlsFlags,
        file: TlsSection,
        env: &dyn EnvSource,
    ) -> Result<Self, ConfigError> {
        let cert = file_setting(pick(&TLS_CERT, flags.tls_cert, env, file.cert))?;
        let key = file_setting(pick(&TLS_KEY, flags.tls_key, env, file.key))?;
        let client_ca = file_setting(pick(
            &TLS_CLIENT_CA,
            flags.tls_client_ca,
            env,
            file.client_ca,
        ))?;

        let require = if flags.require_tls {
            Some((true, REQUIRE_TLS.name()))
        } else if let Some(text) = env.non_empty(REQUIRE_TLS.env) {
            let value = bool_text(&text).ok_or_else(|| {
                invalid(
                    REQUIRE_TLS.env,
                    format!("expected true, false, 1 or 0, got {text:?}"),
                )
            })?;
            Some((value, REQUIRE_TLS.env.to_owned()))
        } else {
            file.require.map(|value| (value, REQUIRE_TLS.file_origin()))
        };

        let server = match (cert, key, client_ca) {
            (Some(cert), Some(key), client_ca) => Some(ServerTls {
                cert,
                key,
                client_ca,
            }),
            (Some(cert), None, _) => {
                return Err(invalid(
                    cert.origin,
                    "a certificate needs its private key too: set --tls-key \
                     (PORTCULLIS_TLS_KEY, or tls.key in the config file)",
                ));
            }
            (None, Some(key), _) => {
                return Err(invalid(
                    key.origin,
                    "a private key needs its certificate too: set --tls-cert \
                     (PORTCULLIS_TLS_CERT, or tls.cert in the config file)",
                ));
            }
            (None, None, Some(ca)) => {
                return Err(invalid(
                    ca.origin,
                    format!("client certificates (mTLS) need TLS on the port: {SET_CERT}"),
                ));
            }
            (None, None, None) => None,
        };
        let require_tls = match require {
            Some((true, origin)) if server.is_none() => {
                return Err(invalid(
                    origin,
                    format!("TLS is required but no certificate is configured: {SET_CERT}"),
                ));
            }
            Some((value, _)) => value,
            None => false,
        };

        let reload_poll = duration_setting(
            file.reload_poll
                .map(|v| (v, "config file: tls.reload_poll".to_owned())),
            DEFAULT_RELOAD_POLL,
        )?;
        if reload_poll.is_zero() || reload_poll > Duration::from_secs(3600) {
            return Err(invalid(
                "config file: tls.reload_poll",
                "must be between 1ms and 1h",
            ));
        }
        let handshake_timeout = duration_setting(
            file.handshake_timeout
                .map(|v| (v, "config file: tls.handshake_timeout".to_owned())),
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        if handshake_timeout.is_zero() {
            return Err(invalid(
                "config file: tls.handshake_timeout",
                "must be positive",
            ));
        }

        Ok(Self {
            server,
            require: require_tls,
            reload_poll,
            handshake_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::load;

    fn error(args: &[&str], vars: &[(&str, &str)]) -> String {
        load(args, vars).unwrap_err().to_string()
    }

    #[test]
    fn plaintext_by_default() {
        let c = load(&[], &[]).unwrap();
        assert!(c.tls.server.is_none() && !c.tls.require);
        assert_eq!(c.tls.reload_poll, super::DEFAULT_RELOAD_POLL);
        assert_eq!(c.tls.handshake_timeout, super::DEFAULT_HANDSHAKE_TIMEOUT);
    }

    #[test]
    fn flags_env_and_file_name_the_files() {
        let c = load(
            &["--tls-cert", "/f/tls.crt", "--require-tls"],
            &[
                ("PORTCULLIS_TLS_KEY", "/e/tls.key"),
                ("PORTCULLIS_TLS_CLIENT_CA", "/e/ca.crt"),
            ],
        )
        .unwrap();
        let s = c.tls.server.unwrap();
        assert_eq!(s.cert.path.to_str(), Some("/f/tls.crt"));
        assert_eq!(s.cert.origin, "--tls-cert");
        assert_eq!(s.key.origin, "PORTCULLIS_TLS_KEY");
        assert_eq!(s.client_ca.unwrap().origin, "PORTCULLIS_TLS_CLIENT_CA");
        assert!(c.tls.require);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[tls]\ncert = \"/t/c\"\nkey = \"/t/k\"\nrequire = true\nreload_poll = \"250ms\"\n\
             handshake_timeout = \"3s\"\n",
        )
        .unwrap();
        let c = load(&["--config", path.to_str().unwrap()], &[]).unwrap();
        let s = c.tls.server.unwrap();
        assert_eq!(s.key.origin, "config file: tls.key");
        assert!(s.client_ca.is_none());
        assert!(c.tls.require);
        assert_eq!(c.tls.reload_poll.as_millis(), 250);
        assert_eq!(c.tls.handshake_timeout.as_secs(), 3);

        for yes in ["true", "1", "TRUE"] {
            let e = error(&[], &[("PORTCULLIS_REQUIRE_TLS", yes)]);
            assert!(e.starts_with("PORTCULLIS_REQUIRE_TLS"), "{e}");
        }
        for no in ["false", "0"] {
            assert!(
                !load(&[], &[("PORTCULLIS_REQUIRE_TLS", no)])
                    .unwrap()
                    .tls
                    .require
            );
        }
        let e = error(&[], &[("PORTCULLIS_REQUIRE_TLS", "maybe")]);
        assert!(e.contains("PORTCULLIS_REQUIRE_TLS"), "{e}");
    }

    #[test]
    fn incomplete_settings_name_what_is_missing() {
        let e = error(&["--tls-cert", "/c"], &[]);
        assert!(
            e.starts_with("--tls-cert") && e.contains("--tls-key"),
            "{e}"
        );
        let e = error(&[], &[("PORTCULLIS_TLS_KEY", "/k")]);
        assert!(
            e.starts_with("PORTCULLIS_TLS_KEY") && e.contains("--tls-cert"),
            "{e}"
        );
        let e = error(&["--tls-client-ca", "/ca"], &[]);
        assert!(
            e.starts_with("--tls-client-ca") && e.contains("--tls-cert"),
            "{e}"
        );
        let e = error(&["--require-tls"], &[]);
        assert!(
            e.starts_with("--require-tls") && e.contains("--tls-cert"),
            "{e}"
        );
        let e = error(&["--tls-cert", "", "--tls-key", "/k"], &[]);
        assert!(e.starts_with("--tls-cert"), "{e}");
    }
}
