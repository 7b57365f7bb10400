//! Where environment variables come from: the process, or a map in tests.

use std::collections::HashMap;

/// Where environment variables come from.
pub trait EnvSource {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;

    /// The variable's value when set to something: an empty variable counts as unset, as
    /// container runtimes and shells often leave them.
    fn non_empty(&self, name: &str) -> Option<String> {
        self.var(name).filter(|v| !v.is_empty())
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}
