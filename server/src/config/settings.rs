//! Each setting's flag, variable, file key and default, read both to resolve it and for `--help`.

use clap::Command;

/// One setting's names and default. File-only keys are not listed: they are read where their
/// section is, and `--help` does not show them.
pub(super) struct Setting<D> {
    /// The flag's long name without the dashes; `None` when the setting has no flag.
    pub flag: Option<&'static str>,
    /// The environment variable.
    pub env: &'static str,
    /// The dotted key in the TOML file; `None` when the file has no such key.
    pub file_key: Option<&'static str>,
    /// What applies when the setting is not given.
    pub default: D,
}

/// No default: unset leaves the feature off, or something else decides (the help says what).
pub(super) struct NoDefault;

/// A default written as a user would write it, parsed by the same code as a given value.
pub(super) struct Plain(pub &'static str);

/// A default computed at start; the text only describes it, for `--help`.
pub(super) struct Computed(pub &'static str);

impl<D> Setting<D> {
    /// How errors name the setting when given as a flag: `--listen` (the variable for a
    /// setting without a flag).
    pub fn name(&self) -> String {
        match self.flag {
            Some(flag) => format!("--{flag}"),
            None => self.env.to_owned(),
        }
    }

    /// How errors name the setting when given in the file: `config file: listen`.
    pub fn file_origin(&self) -> String {
        match self.file_key {
            Some(key) => format!("config file: {key}"),
            None => "config file".to_owned(),
        }
    }
}

impl Setting<Plain> {
    /// The default as a value with its origin, to be parsed like one given by the user.
    pub fn default_value(&self) -> (String, String) {
        (
            self.default.0.to_owned(),
            format!("the default of {}", self.name()),
        )
    }
}

/// What `--help` shows of a default.
pub(super) trait DefaultHelp {
    /// The text after `default:`, if there is a default.
    fn help(&self) -> Option<&'static str>;
}

impl DefaultHelp for NoDefault {
    fn help(&self) -> Option<&'static str> {
        None
    }
}

impl DefaultHelp for Plain {
    fn help(&self) -> Option<&'static str> {
        Some(self.0)
    }
}

impl DefaultHelp for Computed {
    fn help(&self) -> Option<&'static str> {
        Some(self.0)
    }
}

/// A setting as `--help` sees it, whatever its kind of default.
pub(super) trait Documented {
    /// The flag's long name, if it has one.
    fn flag(&self) -> Option<&'static str>;
    /// What is appended to the flag's help: ` [env: X] [default: Y]`. A flag that takes no
    /// value is set through its variable as true or false, so that is said too.
    fn help_suffix(&self, flag_takes_value: bool) -> String;
}

impl<D: DefaultHelp> Documented for Setting<D> {
    fn flag(&self) -> Option<&'static str> {
        self.flag
    }

    fn help_suffix(&self, flag_takes_value: bool) -> String {
        let values = if flag_takes_value { "" } else { "=true|false" };
        let mut suffix = format!(" [env: {}{values}]", self.env);
        if let Some(default) = self.default.help() {
            suffix.push_str(&format!(" [default: {default}]"));
        }
        suffix
    }
}

pub(super) const LISTEN: Setting<Plain> = Setting {
    flag: Some("listen"),
    env: "PORTCULLIS_LISTEN",
    file_key: Some("listen"),
    default: Plain("127.0.0.1:50051"),
};
pub(super) const CONFIG: Setting<NoDefault> = Setting {
    flag: Some("config"),
    env: "PORTCULLIS_CONFIG",
    file_key: None,
    default: NoDefault,
};
pub(super) const REDIS_URL: Setting<NoDefault> = Setting {
    flag: Some("redis-url"),
    env: "PORTCULLIS_REDIS_URL",
    file_key: Some("store.redis_url"),
    default: NoDefault,
};
pub(super) const REDIS_CLUSTER: Setting<NoDefault> = Setting {
    flag: Some("redis-cluster"),
    env: "PORTCULLIS_REDIS_CLUSTER",
    file_key: Some("store.redis_cluster"),
    default: NoDefault,
};
pub(super) const REDIS_CA_FILE: Setting<NoDefault> = Setting {
    flag: Some("redis-ca-file"),
    env: "PORTCULLIS_REDIS_CA_FILE",
    file_key: Some("store.redis_ca_file"),
    default: NoDefault,
};
pub(super) const REDIS_CLIENT_CERT: Setting<NoDefault> = Setting {
    flag: Some("redis-client-cert"),
    env: "PORTCULLIS_REDIS_CLIENT_CERT",
    file_key: Some("store.redis_client_cert"),
    default: NoDefault,
};
pub(super) const REDIS_CLIENT_KEY: Setting<NoDefault> = Setting {
    flag: Some("redis-client-key"),
    env: "PORTCULLIS_REDIS_CLIENT_KEY",
    file_key: Some("store.redis_client_key"),
    default: NoDefault,
};
pub(super) const REDIS_USERNAME: Setting<NoDefault> = Setting {
    flag: None,
    env: "PORTCULLIS_REDIS_USERNAME",
    file_key: Some("store.redis_username"),
    default: NoDefault,
};
pub(super) const ENVOY_CONFIG: Setting<NoDefault> = Setting {
    flag: Some("envoy-config"),
    env: "PORTCULLIS_ENVOY_CONFIG",
    file_key: Some("envoy.config"),
    default: NoDefault,
};
/// The file's `limits.default` is a table (`rate`, `period`, `burst`), read by its section.
pub(super) const DEFAULT_LIMIT: Setting<Plain> = Setting {
    flag: Some("default-limit"),
    env: "PORTCULLIS_DEFAULT_LIMIT",
    file_key: Some("limits.default"),
    default: Plain("60/1m"),
};
/// The file's `store.fail_mode` also takes `unavailable`, so its section reads it.
pub(super) const FAIL_MODE: Setting<Plain> = Setting {
    flag: Some("fail-mode"),
    env: "PORTCULLIS_FAIL_MODE",
    file_key: Some("store.fail_mode"),
    default: Plain("closed"),
};
pub(super) const STORE_TIMEOUT: Setting<Plain> = Setting {
    flag: Some("store-timeout"),
    env: "PORTCULLIS_STORE_TIMEOUT",
    file_key: Some("store.timeout"),
    default: Plain("100ms"),
};
pub(super) const JWT_KEY_SET: Setting<NoDefault> = Setting {
    flag: Some("jwt-key-set"),
    env: "PORTCULLIS_JWT_KEY_SET",
    file_key: Some("auth.jwt_key_set"),
    default: NoDefault,
};
pub(super) const METRICS_LISTEN: Setting<Plain> = Setting {
    flag: Some("metrics-listen"),
    env: "PORTCULLIS_METRICS_LISTEN",
    file_key: Some("metrics_listen"),
    default: Plain("127.0.0.1:9090"),
};
pub(super) const LOG_FORMAT: Setting<Computed> = Setting {
    flag: Some("log-format"),
    env: "PORTCULLIS_LOG_FORMAT",
    file_key: Some("log_format"),
    default: Computed("json, text when stderr is a terminal"),
};
pub(super) const JWT_ISSUER: Setting<Plain> = Setting {
    flag: Some("jwt-issuer"),
    env: "PORTCULLIS_JWT_ISSUER",
    file_key: Some("auth.issuer"),
    default: Plain("portcullis"),
};
pub(super) const JWT_AUDIENCE: Setting<Plain> = Setting {
    flag: Some("jwt-audience"),
    env: "PORTCULLIS_JWT_AUDIENCE",
    file_key: Some("auth.audience"),
    default: Plain("portcullis"),
};
pub(super) const ACCESS_TOKEN_TTL: Setting<Plain> = Setting {
    flag: Some("access-token-ttl"),
    env: "PORTCULLIS_ACCESS_TOKEN_TTL",
    file_key: Some("auth.access_token_ttl"),
    default: Plain("30m"),
};
pub(super) const TLS_CERT: Setting<NoDefault> = Setting {
    flag: Some("tls-cert"),
    env: "PORTCULLIS_TLS_CERT",
    file_key: Some("tls.cert"),
    default: NoDefault,
};
pub(super) const TLS_KEY: Setting<NoDefault> = Setting {
    flag: Some("tls-key"),
    env: "PORTCULLIS_TLS_KEY",
    file_key: Some("tls.key"),
    default: NoDefault,
};
pub(super) const TLS_CLIENT_CA: Setting<NoDefault> = Setting {
    flag: Some("tls-client-ca"),
    env: "PORTCULLIS_TLS_CLIENT_CA",
    file_key: Some("tls.client_ca"),
    default: NoDefault,
};
/// Off unless set; `--help` has never shown a default for it.
pub(super) const REQUIRE_TLS: Setting<NoDefault> = Setting {
    flag: Some("require-tls"),
    env: "PORTCULLIS_REQUIRE_TLS",
    file_key: Some("tls.require"),
    default: NoDefault,
};

/// Every setting, in the order `--help` lists the flags.
const ALL: &[&dyn Documented] = &[
    &LISTEN,
    &CONFIG,
    &REDIS_URL,
    &REDIS_CLUSTER,
    &REDIS_CA_FILE,
    &REDIS_CLIENT_CERT,
    &REDIS_CLIENT_KEY,
    &REDIS_USERNAME,
    &ENVOY_CONFIG,
    &DEFAULT_LIMIT,
    &FAIL_MODE,
    &STORE_TIMEOUT,
    &JWT_KEY_SET,
    &METRICS_LISTEN,
    &LOG_FORMAT,
    &JWT_ISSUER,
    &JWT_AUDIENCE,
    &ACCESS_TOKEN_TTL,
    &TLS_CERT,
    &TLS_KEY,
    &TLS_CLIENT_CA,
    &REQUIRE_TLS,
];

/// The setting of the flag `--long`, with its place in `--help`.
fn by_flag(long: &str) -> Option<(usize, &'static dyn Documented)> {
    ALL.iter()
        .copied()
        .enumerate()
        .find(|(_, s)| s.flag() == Some(long))
}

/// `command` with each flag's variable and default appended to its help, and the flags in the
/// table's order (they are declared beside the code that reads them, not in that order).
pub(super) fn document(command: Command) -> Command {
    command.mut_args(|arg| {
        let Some((order, setting)) = arg.get_long().and_then(by_flag) else {
            return arg;
        };
        let suffix = setting.help_suffix(arg.get_action().takes_values());
        let help = format!(
            "{}{suffix}",
            arg.get_help().map(|h| h.to_string()).unwrap_or_default()
        );
        let long_help = arg.get_long_help().map(|h| format!("{h}{suffix}"));
        let arg = arg.help(help.trim_start().to_owned()).display_order(order);
        match long_help {
            Some(text) => arg.long_help(text),
            None => arg,
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_has_a_setting_entry() {
        let command = super::super::Flags::command();
        let longs: Vec<&str> = command
            .get_arguments()
            .filter_map(|a| a.get_long())
            .collect();
        for arg in command.get_arguments() {
            let long = arg.get_long().unwrap_or(arg.get_id().as_str());
            assert!(
                by_flag(long).is_some(),
                "--{long} has no entry in config/settings.rs, so --help would not show its \
                 variable and default"
            );
        }
        for flag in ALL.iter().filter_map(|s| s.flag()) {
            assert!(
                longs.contains(&flag),
                "the table names --{flag}, which is no flag"
            );
        }
    }
}
