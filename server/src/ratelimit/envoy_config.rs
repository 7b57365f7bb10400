//! envoyproxy/ratelimit YAML configuration: domains of nested descriptors, and the lookup of the limit that applies to a request descriptor.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::policy::Limit;

/// Rate-limit configuration in the envoyproxy/ratelimit YAML format, one tree of descriptors per domain.
#[derive(Debug, Clone, Default)]
pub struct EnvoyConfig {
    domains: HashMap<String, Level>,
}

/// The limit that a configured descriptor node carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyLimit {
    /// The `rate_limit.name` from the config, if one was given (an empty name counts as none).
    pub name: Option<String>,
    /// None when unlimited.
    pub rate: Option<EnvoyRate>,
    /// Decide and report, but never enforce.
    pub shadow_mode: bool,
}

/// A number of requests allowed per unit of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvoyRate {
    /// Requests allowed per unit; 0 means every request is over the limit.
    pub requests_per_unit: u32,
    /// The time unit the count applies to.
    pub unit: EnvoyUnit,
}

/// The time unit of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvoyUnit {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds.
    Day,
    /// 7 days.
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

const DAY_SECS: u64 = 24 * 60 * 60;

impl EnvoyUnit {
    const ALL: [Self; 7] = [
        Self::Second,
        Self::Minute,
        Self::Hour,
        Self::Day,
        Self::Week,
        Self::Month,
        Self::Year,
    ];

    /// The unit's length: month = 30 days, year = 365 days (as envoyproxy/ratelimit counts them).
    pub fn period(self) -> Duration {
        Duration::from_secs(match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 60 * 60,
            Self::Day => DAY_SECS,
            Self::Week => 7 * DAY_SECS,
            Self::Month => 30 * DAY_SECS,
            Self::Year => 365 * DAY_SECS,
        })
    }

    /// The number of this unit in Envoy's RateLimitResponse.RateLimit.Unit / envoy.type.v3.RateLimitUnit enums: SECOND=1, MINUTE=2, HOUR=3, DAY=4, MONTH=5, YEAR=6, WEEK=7.
    pub fn proto_number(self) -> i32 {
        match self {
            Self::Second => 1,
            Self::Minute => 2,
            Self::Hour => 3,
            Self::Day => 4,
            Self::Month => 5,
            Self::Year => 6,
            // WEEK was appended to the proto enum later, hence out of order.
            Self::Week => 7,
        }
    }

    /// The inverse of proto_number; None for 0 (UNKNOWN) and unknown numbers.
    pub fn from_proto_number(n: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|unit| unit.proto_number() == n)
    }

    /// The lowercase name used in the YAML format.
    fn name(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    /// Parses a unit name case-insensitively, as envoyproxy/ratelimit does.
    fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|unit| unit.name().eq_ignore_ascii_case(text))
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyConfigError {
    /// A file or folder could not be read.
    #[error("cannot read rate limit config {}: {source}", path.display())]
    Io {
        /// The file or folder that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A document is not valid YAML, or does not have the expected shape (including unknown keys).
    #[error("{origin}: invalid rate limit config: {message}")]
    Yaml {
        /// The file (or document name) the error is in.
        origin: String,
        /// What the YAML parser reported, with its location.
        message: String,
    },
    /// A document parsed but breaks a rule of the format.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file (or document name) the error is in.
        origin: String,
        /// What is wrong, naming the domain and descriptor.
        message: String,
    },
}

impl EnvoyConfig {
    /// Loads a file, or every *.yaml / *.yml file in a folder (recursively, sorted by path for determinism).
    ///
    /// In a folder, names starting with `.` are skipped: they are editor or VCS leftovers, or the
    /// `..data` / `..<timestamp>` folders of a Kubernetes ConfigMap mount, whose files are also linked
    /// at the top and would otherwise define every domain twice.
    pub fn load(path: &Path) -> Result<Self, EnvoyConfigError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EnvoyConfigError::Io { path, source }
        };
        let files = if fs::metadata(path).map_err(io_err(path))?.is_dir() {
            let mut files = Vec::new();
            let mut visited = HashSet::new();
            collect_yaml_files(path, &mut files, &mut visited)?;
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut docs = Vec::with_capacity(files.len());
        for file in files {
            let text = fs::read_to_string(&file).map_err(io_err(&file))?;
            docs.push((file.display().to_string(), text));
        }
        Self::from_documents(
            docs.iter()
                .map(|(origin, text)| (origin.as_str(), text.as_str())),
        )
    }

    /// Builds from (origin name, YAML text) pairs; `load` uses this. Tests use it directly.
    pub fn from_documents<'a>(
        docs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, EnvoyConfigError> {
        let mut domains = HashMap::new();
        // Where each domain came from, to name both files when one is defined twice.
        let mut origins: HashMap<String, &'a str> = HashMap::new();
        for (origin, text) in docs {
            let raw: RawDocument =
                serde_yaml_ng::from_str(text).map_err(|err| EnvoyConfigError::Yaml {
                    origin: origin.to_owned(),
                    message: err.to_string(),
                })?;
            let invalid = |message: String| EnvoyConfigError::Invalid {
                origin: origin.to_owned(),
                message,
            };
            let domain = raw.domain.unwrap_or_default();
            if domain.is_empty() {
                return Err(invalid("\"domain\" is missing or empty".to_owned()));
            }
            if let Some(first) = origins.get(&domain) {
                return Err(invalid(format!(
                    "domain \"{domain}\" is already defined in {first}"
                )));
            }
            let mut path = Vec::new();
            let level = build_level(
                raw.descriptors.unwrap_or_default(),
                &mut path,
                "descriptors",
            )
            .map_err(|message| invalid(format!("domain \"{domain}\": {message}")))?;
            origins.insert(domain.clone(), origin);
            domains.insert(domain, level);
        }
        Ok(Self { domains })
    }

    /// The limit for one request descriptor, or None when no configured limit applies.
    ///
    /// Each entry descends one level: an exact (key, value) match wins, then the longest `prefix*`
    /// value that the request value starts with, then the key's empty-value (any value) descriptor.
    /// The choice is greedy, without backtracking, as in envoyproxy/ratelimit.
    pub fn lookup(&self, domain: &str, entries: &[(&str, &str)]) -> Option<&EnvoyLimit> {
        let ((last_key, last_value), parents) = entries.split_last()?;
        let mut level = self.domains.get(domain)?;
        for (key, value) in parents {
            level = &level.find(key, value)?.children;
        }
        level.find(last_key, last_value)?.limit.as_ref()
    }

    /// Whether the domain is configured.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }
}

/// Gathers *.yaml / *.yml files under `dir`, following symbolic links but entering each real folder once.
fn collect_yaml_files(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), EnvoyConfigError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EnvoyConfigError::Io { path, source }
    };
    // Canonical paths stop a symlink loop from recursing forever.
    let real = fs::canonicalize(dir).map_err(io_err(dir))?;
    if !visited.insert(real) {
        return Ok(());
    }
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        paths.push(entry.map_err(io_err(dir))?.path());
    }
    // Depth-first over sorted entries yields the files in path order, and makes the path kept
    // for a folder reached twice through links always the same one.
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."));
        if hidden {
            continue;
        }
        // metadata() follows links, so linked files and folders count as what they point to.
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            collect_yaml_files(&path, files, visited)?;
        } else if meta.is_file() && has_yaml_extension(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn has_yaml_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml"))
}

/// The descriptors at one depth of a domain's tree, grouped by key.
#[derive(Debug, Clone, Default)]
struct Level {
    by_key: HashMap<String, KeyChildren>,
}

/// The descriptors of one key at one level, split by how their value matches.
#[derive(Debug, Clone, Default)]
struct KeyChildren {
    exact: HashMap<String, Node>,
    /// `prefix*` values without the `*`, longest first so the first hit is the most specific.
    prefixes: Vec<(String, Node)>,
    /// The empty-value descriptor, which matches any value.
    any: Option<Node>,
}

#[derive(Debug, Clone)]
struct Node {
    limit: Option<EnvoyLimit>,
    children: Level,
}

impl Level {
    fn find(&self, key: &str, value: &str) -> Option<&Node> {
        let children = self.by_key.get(key)?;
        if let Some(node) = children.exact.get(value) {
            return Some(node);
        }
        children
            .prefixes
            .iter()
            .find(|(prefix, _)| value.starts_with(prefix.as_str()))
            .map(|(_, node)| node)
            .or(children.any.as_ref())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    domain: Option<String>,
    descriptors: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: String,
    value: Option<String>,
    rate_limit: Option<RawRateLimit>,
    shadow_mode: Option<bool>,
    // Accepted so existing configs load; it only affects upstream's metrics.
    #[serde(rename = "detailed_metric")]
    _detailed_metric: Option<bool>,
    descriptors: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: Option<String>,
    requests_per_unit: Option<u32>,
    unlimited: Option<bool>,
    name: Option<String>,
}

/// Builds one level; `path` holds the `key=value` labels of the ancestors and `yaml` the YAML
/// path of this level's list (e.g. `descriptors[0].descriptors`), for error messages.
fn build_level(
    raw: Vec<RawDescriptor>,
    path: &mut Vec<String>,
    yaml: &str,
) -> Result<Level, String> {
    let mut level = Level::default();
    for (index, desc) in raw.into_iter().enumerate() {
        let yaml = format!("{yaml}[{index}]");
        let value = desc.value.unwrap_or_default();
        if desc.key.is_empty() {
            return Err(if path.is_empty() {
                "a top-level descriptor has an empty \"key\"".to_owned()
            } else {
                format!(
                    "descriptor {}: a child has an empty \"key\"",
                    path.join(" > ")
                )
            });
        }
        path.push(if value.is_empty() {
            desc.key.clone()
        } else {
            format!("{}={value}", desc.key)
        });
        let limit = match desc.rate_limit {
            Some(rate_limit) => {
                let yaml = format!("{yaml}.rate_limit");
                Some(
                    build_limit(rate_limit, desc.shadow_mode, &yaml)
                        .map_err(|msg| at(path, &msg))?,
                )
            }
            None => None,
        };
        let children = build_level(
            desc.descriptors.unwrap_or_default(),
            path,
            &format!("{yaml}.descriptors"),
        )?;
        let node = Node { limit, children };
        let siblings = level.by_key.entry(desc.key).or_default();
        let duplicate = if value.is_empty() {
            siblings.any.replace(node).is_some()
        } else if let Some(prefix) = value.strip_suffix('*') {
            let taken = siblings.prefixes.iter().any(|(p, _)| p == prefix);
            if !taken {
                siblings.prefixes.push((prefix.to_owned(), node));
            }
            taken
        } else {
            siblings.exact.insert(value, node).is_some()
        };
        if duplicate {
            return Err(at(path, "defined twice at the same level"));
        }
        path.pop();
    }
    for siblings in level.by_key.values_mut() {
        siblings
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    }
    Ok(level)
}

/// Prefixes a message with the descriptor path, e.g. `descriptor tenant=acme > path: ...`.
fn at(path: &[String], message: &str) -> String {
    format!("descriptor {}: {message}", path.join(" > "))
}

/// Reads one `rate_limit` entry, found at the YAML path `yaml`.
fn build_limit(
    raw: RawRateLimit,
    shadow_mode: Option<bool>,
    yaml: &str,
) -> Result<EnvoyLimit, String> {
    let rate = if raw.unlimited.unwrap_or(false) {
        match (&raw.unit, raw.requests_per_unit) {
            (None, None) => None,
            (Some(_), _) => {
                return Err("rate_limit is unlimited, so it must not set \"unit\"".into());
            }
            (None, Some(_)) => {
                return Err(
                    "rate_limit is unlimited, so it must not set \"requests_per_unit\"".into(),
                );
            }
        }
    } else {
        match (raw.unit, raw.requests_per_unit) {
            (Some(unit_name), Some(requests_per_unit)) => {
                let unit = EnvoyUnit::parse(&unit_name).ok_or_else(|| {
                    format!(
                        "rate_limit has unknown unit \"{unit_name}\" (expected second, minute, \
                         hour, day, week, month or year)"
                    )
                })?;
                // Checked as any limit is, so that no request is ever refused for what only
                // the file says (0 per unit is allowed: it blocks everything).
                if requests_per_unit > 0 {
                    Limit::new(u64::from(requests_per_unit), unit.period(), 0).map_err(|e| {
                        format!("{yaml}: {requests_per_unit} per {unit_name}: {}", e.reason)
                    })?;
                }
                Some(EnvoyRate {
                    requests_per_unit,
                    unit,
                })
            }
            (None, Some(_)) => return Err("rate_limit needs \"unit\"".into()),
            (Some(_), None) => return Err("rate_limit needs \"requests_per_unit\"".into()),
            (None, None) => {
                return Err("rate_limit needs \"unit\" and \"requests_per_unit\"".into());
            }
        }
    };
    Ok(EnvoyLimit {
        name: raw.name.filter(|name| !name.is_empty()),
        rate,
        shadow_mode: shadow_mode.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> EnvoyConfig {
        match EnvoyConfig::from_documents([("test.yaml", yaml)]) {
            Ok(config) => config,
            Err(err) => panic!("config should load: {err}"),
        }
    }

    fn error(yaml: &str) -> String {
        match EnvoyConfig::from_documents([("bad.yaml", yaml)]) {
            Ok(config) => panic!("config should be rejected: {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn rate(requests_per_unit: u32, unit: EnvoyUnit) -> Option<EnvoyRate> {
        Some(EnvoyRate {
            requests_per_unit,
            unit,
        })
    }

    fn rate_of(config: &EnvoyConfig, domain: &str, entries: &[(&str, &str)]) -> Option<EnvoyRate> {
        config.lookup(domain, entries).and_then(|limit| limit.rate)
    }

    const TREE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: second, requests_per_unit: 10 }
  - key: remote_address
    value: 10.0.0.1
    rate_limit: { unit: minute, requests_per_unit: 20, name: vip }
  - key: path
    value: /api/*
    rate_limit: { unit: hour, requests_per_unit: 30 }
  - key: path
    value: /api/v2/*
    rate_limit: { unit: hour, requests_per_unit: 40 }
  - key: path
    value: /exact
    rate_limit: { unit: hour, requests_per_unit: 50 }
  - key: tenant
    value: acme
    descriptors:
      - key: method
        value: GET
        rate_limit: { unit: Day, requests_per_unit: 60 }
      - key: method
        rate_limit: { unit: DAY, requests_per_unit: 70 }
        descriptors:
          - key: user
            rate_limit: { unit: week, requests_per_unit: 80 }
"#;

    #[test]
    fn nested_match_walks_the_tree() {
        let config = config(TREE);
        assert_eq!(
            rate_of(&config, "edge", &[("tenant", "acme"), ("method", "GET")]),
            rate(60, EnvoyUnit::Day)
        );
        assert_eq!(
            rate_of(
                &config,
                "edge",
                &[("tenant", "acme"), ("method", "PUT"), ("user", "bob")]
            ),
            rate(80, EnvoyUnit::Week)
        );
        // A different tenant value has no descriptor and no fallback.
        assert_eq!(
            config.lookup("edge", &[("tenant", "other"), ("method", "GET")]),
            None
        );
        // Entries match level by level, so order matters.
        assert_eq!(
            config.lookup("edge", &[("method", "GET"), ("tenant", "acme")]),
            None
        );
    }

    #[test]
    fn empty_value_matches_any_value_and_exact_wins() {
        let config = config(TREE);
        assert_eq!(
            rate_of(&config, "edge", &[("remote_address", "192.168.1.1")]),
            rate(10, EnvoyUnit::Second)
        );
        assert_eq!(
            rate_of(&config, "edge", &[("remote_address", "")]),
            rate(10, EnvoyUnit::Second)
        );
        let vip = config.lookup("edge", &[("remote_address", "10.0.0.1")]);
        assert_eq!(
            vip,
            Some(&EnvoyLimit {
                name: Some("vip".to_owned()),
                rate: rate(20, EnvoyUnit::Minute),
                shadow_mode: false,
            })
        );
        assert_eq!(
            rate_of(&config, "edge", &[("tenant", "acme"), ("method", "POST")]),
            rate(70, EnvoyUnit::Day)
        );
    }

    #[test]
    fn prefix_match_prefers_longest_prefix_and_exact() {
        let config = config(TREE);
        assert_eq!(
            rate_of(&config, "edge", &[("path", "/api/v1/users")]),
            rate(30, EnvoyUnit::Hour)
        );
        assert_eq!(
            rate_of(&config, "edge", &[("path", "/api/v2/users")]),
            rate(40, EnvoyUnit::Hour)
        );
        assert_eq!(
            rate_of(&config, "edge", &[("path", "/api/")]),
            rate(30, EnvoyUnit::Hour)
        );
        assert_eq!(
            rate_of(&config, "edge", &[("path", "/exact")]),
            rate(50, EnvoyUnit::Hour)
        );
        // No prefix matches and there is no empty-value descriptor for `path`.
        assert_eq!(config.lookup("edge", &[("path", "/ap")]), None);
        assert_eq!(config.lookup("edge", &[("path", "/exact/more")]), None);
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order_in_the_file() {
        let config = config(
            r#"
domain: d
descriptors:
  - key: k
    value: "a*"
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: k
    value: "abc*"
    rate_limit: { unit: second, requests_per_unit: 3 }
  - key: k
    value: "ab*"
    rate_limit: { unit: second, requests_per_unit: 2 }
  - key: k
    rate_limit: { unit: second, requests_per_unit: 9 }
  - key: all
    value: "*"
    rate_limit: { unit: second, requests_per_unit: 4 }
"#,
        );
        let per = |value| rate_of(&config, "d", &[("k", value)]).map(|r| r.requests_per_unit);
        assert_eq!(per("abcd"), Some(3));
        assert_eq!(per("abd"), Some(2));
        assert_eq!(per("axe"), Some(1));
        // The empty-value descriptor only applies when no prefix matches.
        assert_eq!(per("zzz"), Some(9));
        // A bare `*` is an empty prefix: it matches every value, even an empty one.
        assert_eq!(
            rate_of(&config, "d", &[("all", "")]).map(|r| r.requests_per_unit),
            Some(4)
        );
    }

    #[test]
    fn node_without_rate_limit_has_no_limit() {
        let config = config(TREE);
        assert_eq!(config.lookup("edge", &[("tenant", "acme")]), None);
    }

    #[test]
    fn partial_match_and_empty_request_return_none() {
        let config = config(TREE);
        assert_eq!(
            config.lookup("edge", &[("remote_address", "10.0.0.1"), ("path", "/")]),
            None
        );
        assert_eq!(config.lookup("edge", &[]), None);
        assert_eq!(
            config.lookup("other", &[("remote_address", "1.2.3.4")]),
            None
        );
        assert!(config.has_domain("edge"));
        assert!(!config.has_domain("other"));
        assert!(!EnvoyConfig::default().has_domain("edge"));
    }

    #[test]
    fn unlimited_and_shadow_mode() {
        let config = config(
            r#"
domain: d
descriptors:
  - key: internal
    rate_limit: { unlimited: true, name: free }
  - key: trial
    shadow_mode: true
    detailed_metric: true
    rate_limit: { unit: minute, requests_per_unit: 0 }
    descriptors:
      - key: user
        rate_limit: { unit: minute, requests_per_unit: 5 }
"#,
        );
        assert_eq!(
            config.lookup("d", &[("internal", "x")]),
            Some(&EnvoyLimit {
                name: Some("free".to_owned()),
                rate: None,
                shadow_mode: false,
            })
        );
        assert_eq!(
            config.lookup("d", &[("trial", "x")]),
            Some(&EnvoyLimit {
                name: None,
                rate: rate(0, EnvoyUnit::Minute),
                shadow_mode: true,
            })
        );
        // shadow_mode belongs to the node it is set on, not to its children.
        assert_eq!(
            config
                .lookup("d", &[("trial", "x"), ("user", "u")])
                .map(|limit| limit.shadow_mode),
            Some(false)
        );
    }

    #[test]
    fn units_periods_and_proto_numbers() {
        let expected = [
            (EnvoyUnit::Second, 1, 1),
            (EnvoyUnit::Minute, 60, 2),
            (EnvoyUnit::Hour, 3_600, 3),
            (EnvoyUnit::Day, 86_400, 4),
            (EnvoyUnit::Week, 604_800, 7),
            (EnvoyUnit::Month, 2_592_000, 5),
            (EnvoyUnit::Year, 31_536_000, 6),
        ];
        for (unit, secs, number) in expected {
            assert_eq!(unit.period(), Duration::from_secs(secs), "{unit:?}");
            assert_eq!(unit.proto_number(), number, "{unit:?}");
            assert_eq!(EnvoyUnit::from_proto_number(number), Some(unit));
            assert_eq!(EnvoyUnit::parse(&unit.name().to_uppercase()), Some(unit));
        }
        for number in [0, 8, -1, i32::MAX] {
            assert_eq!(EnvoyUnit::from_proto_number(number), None, "{number}");
        }
    }

    #[test]
    fn rejects_missing_or_empty_domain() {
        for yaml in ["descriptors: []", "domain: \"\"", "domain:", ""] {
            let message = error(yaml);
            assert!(message.starts_with("bad.yaml: "), "{message}");
            assert!(
                message.contains("\"domain\" is missing or empty"),
                "{message}"
            );
        }
    }

    #[test]
    fn rejects_duplicate_domain_across_documents() {
        let err = EnvoyConfig::from_documents([
            ("a.yaml", "domain: edge"),
            ("b.yaml", "domain: other"),
            ("c.yaml", "domain: edge"),
        ])
        .map(|_| ())
        .map_err(|err| err.to_string());
        assert_eq!(
            err,
            Err("c.yaml: domain \"edge\" is already defined in a.yaml".to_owned())
        );
    }

    #[test]
    fn rejects_duplicate_siblings() {
        let message = error(
            r#"
domain: edge
descriptors:
  - key: tenant
    value: acme
    descriptors:
      - key: path
        value: "/a*"
      - key: path
        value: "/a*"
"#,
        );
        assert_eq!(
            message,
            "bad.yaml: domain \"edge\": descriptor tenant=acme > path=/a*: defined twice at the same level"
        );
        // An absent value and an empty one are the same descriptor.
        let message =
            error("domain: edge\ndescriptors:\n  - key: ip\n  - key: ip\n    value: \"\"\n");
        assert!(
            message.contains("descriptor ip: defined twice at the same level"),
            "{message}"
        );
        let message = error(
            "domain: edge\ndescriptors:\n  - key: ip\n    value: a\n  - key: ip\n    value: a\n",
        );
        assert!(
            message.contains("descriptor ip=a: defined twice"),
            "{message}"
        );
        // The same value under different keys is fine.
        config("domain: edge\ndescriptors:\n  - key: a\n    value: x\n  - key: b\n    value: x\n");
    }

    /// Before: such a file loaded, and every ShouldRateLimit for the descriptor answered
    /// INVALID_ARGUMENT about the request.
    #[test]
    fn a_limit_no_request_could_use_stops_the_load() {
        let message = error(
            "domain: edge\ndescriptors:\n  - key: z\n  - key: a\n    descriptors:\n      - key: c\n      - key: b\n        value: x\n        rate_limit: { unit: second, requests_per_unit: 1000000000 }\n",
        );
        // The descriptor by its keys and values, and the entry by its YAML path.
        assert_eq!(
            message,
            "bad.yaml: domain \"edge\": descriptor a > b=x: descriptors[1].descriptors[1].rate_limit: \
             1000000000 per second: must be at most one per microsecond of the period"
        );
        // At the bound, and 0 (blocks everything), are fine.
        config(
            "domain: edge\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1000000 }\n",
        );
        config(
            "domain: edge\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 0 }\n",
        );
    }

    #[test]
    fn rejects_incomplete_rate_limit() {
        let message = error(
            r#"
domain: edge
descriptors:
  - key: remote_address
    value: 10.0.0.1
    rate_limit: { requests_per_unit: 10 }
"#,
        );
        assert_eq!(
            message,
            "bad.yaml: domain \"edge\": descriptor remote_address=10.0.0.1: rate_limit needs \"unit\""
        );
        let message = error(
            "domain: edge\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        rate_limit: { unit: second }\n",
        );
        assert!(
            message.contains("descriptor a > b: rate_limit needs \"requests_per_unit\""),
            "{message}"
        );
        let message = error("domain: edge\ndescriptors:\n  - key: a\n    rate_limit: {}\n");
        assert!(
            message.contains("descriptor a: rate_limit needs \"unit\" and \"requests_per_unit\""),
            "{message}"
        );
        let message = error(
            "domain: edge\ndescriptors:\n  - key: a\n    rate_limit: { unlimited: false, name: x }\n",
        );
        assert!(message.contains("rate_limit needs"), "{message}");
    }

    #[test]
    fn rejects_unlimited_with_a_rate() {
        let message = error(
            "domain: edge\ndescriptors:\n  - key: a\n    rate_limit: { unlimited: true, unit: second }\n",
        );
        assert!(
            message.contains("descriptor a: rate_limit is unlimited, so it must not set \"unit\""),
            "{message}"
        );
        let message = error(
            "domain: edge\ndescriptors:\n  - key: a\n    rate_limit: { unlimited: true, requests_per_unit: 0 }\n",
        );
        assert!(
            message.contains("must not set \"requests_per_unit\""),
            "{message}"
        );
    }

    #[test]
    fn rejects_unknown_unit() {
        let message = error(
            "domain: edge\ndescriptors:\n  - key: a\n    value: b\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
        );
        assert!(
            message.starts_with(
                "bad.yaml: domain \"edge\": descriptor a=b: rate_limit has unknown unit \"fortnight\""
            ),
            "{message}"
        );
    }

    #[test]
    fn rejects_empty_key() {
        let message = error("domain: edge\ndescriptors:\n  - key: \"\"\n");
        assert!(
            message.contains("top-level descriptor has an empty \"key\""),
            "{message}"
        );
        let message =
            error("domain: edge\ndescriptors:\n  - key: a\n    descriptors:\n      - value: x\n");
        assert!(message.contains("missing field `key`"), "{message}");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_yaml() {
        let cases = [
            ("domain: edge\nfoo: 1\n", "foo"),
            (
                "domain: edge\ndescriptors:\n  - key: a\n    rate_limt: {}\n",
                "rate_limt",
            ),
            (
                "domain: edge\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1, burst: 2 }\n",
                "burst",
            ),
            (
                "domain: edge\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: -1 }\n",
                "requests_per_unit",
            ),
            ("domain: [edge\n", "line"),
        ];
        for (yaml, needle) in cases {
            let err = EnvoyConfig::from_documents([("bad.yaml", yaml)]);
            let Err(EnvoyConfigError::Yaml { origin, message }) = err else {
                panic!("expected a YAML error for {yaml:?}, got {err:?}");
            };
            assert_eq!(origin, "bad.yaml");
            let full = format!("{origin}: {message}");
            assert!(full.contains(needle), "{needle} not in {full}");
        }
    }

    #[test]
    fn scalar_values_are_read_as_text() {
        let config = config(
            "domain: edge\ndescriptors:\n  - key: port\n    value: 443\n    rate_limit: { unit: second, requests_per_unit: 1 }\n",
        );
        assert!(config.lookup("edge", &[("port", "443")]).is_some());
    }

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, text).unwrap();
    }

    #[test]
    fn loads_a_folder_recursively() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("a.yaml"),
            "domain: one\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1 }\n",
        );
        write(
            &dir.path().join("nested/b.yml"),
            "domain: two\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 2 }\n",
        );
        // Neither a YAML extension nor visible: both ignored, although they are not valid configs.
        write(&dir.path().join("README.md"), "not: [yaml");
        write(&dir.path().join(".a.yaml.swp"), "domain: one");
        write(&dir.path().join(".hidden/c.yaml"), "domain: one");

        let config = EnvoyConfig::load(dir.path()).unwrap();
        assert_eq!(
            rate_of(&config, "one", &[("k", "v")]),
            rate(1, EnvoyUnit::Second)
        );
        assert_eq!(
            rate_of(&config, "two", &[("k", "v")]),
            rate(2, EnvoyUnit::Minute)
        );

        // A single file loads on its own.
        let single = EnvoyConfig::load(&dir.path().join("nested/b.yml")).unwrap();
        assert!(single.has_domain("two") && !single.has_domain("one"));
    }

    #[test]
    fn folder_duplicate_domain_names_both_files_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        // Enough files that an unsorted directory listing would be caught.
        for name in [
            "z.yaml",
            "m/a.yaml",
            "k/c.yml",
            "k/b/y.yaml",
            "e.yml",
            "q.yaml",
        ] {
            write(&dir.path().join(name), "domain: edge\n");
        }
        let err = EnvoyConfig::load(dir.path()).unwrap_err();
        let first = dir.path().join("e.yml");
        let second = dir.path().join("k/b/y.yaml");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: domain \"edge\" is already defined in {}",
                second.display(),
                first.display()
            )
        );
    }

    #[test]
    fn folder_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("ok.yaml"), "domain: a\n");
        write(&dir.path().join("sub/broken.yaml"), "domain: b\nextra: 1\n");
        let message = EnvoyConfig::load(dir.path()).unwrap_err().to_string();
        let broken = dir.path().join("sub/broken.yaml");
        assert!(
            message.starts_with(&format!("{}: ", broken.display())),
            "{message}"
        );
        assert!(message.contains("extra"), "{message}");
    }

    #[test]
    fn missing_path_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let err = EnvoyConfig::load(&missing).unwrap_err();
        assert!(matches!(&err, EnvoyConfigError::Io { path, .. } if *path == missing));
        assert!(err.to_string().contains("nope.yaml"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn follows_links_once_like_a_configmap_mount() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        // Kubernetes mounts a ConfigMap as ..<timestamp>/file, ..data -> ..<timestamp>, file -> ..data/file.
        write(
            &dir.path().join("..2024_01_01/rl.yaml"),
            "domain: edge\ndescriptors:\n  - key: k\n    rate_limit: { unit: hour, requests_per_unit: 3 }\n",
        );
        symlink("..2024_01_01", dir.path().join("..data")).unwrap();
        symlink("..data/rl.yaml", dir.path().join("rl.yaml")).unwrap();
        // A link back to the root must not recurse forever.
        symlink(".", dir.path().join("loop")).unwrap();
        let config = EnvoyConfig::load(dir.path()).unwrap();
        assert_eq!(
            rate_of(&config, "edge", &[("k", "v")]),
            rate(3, EnvoyUnit::Hour)
        );
    }
}
