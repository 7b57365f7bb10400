//! Argon2id cost settings ([`Argon2Params`]), their validation, and the caps on stored hashes.

use serde::Deserialize;

/// Largest memory cost (KiB) of a stored hash we agree to evaluate: 256 MiB.
pub const MAX_STORED_MEMORY_KIB: u32 = 262_144;
/// Largest iteration count of a stored hash we agree to evaluate.
pub const MAX_STORED_ITERATIONS: u32 = 10;
/// Largest parallelism (lanes) of a stored hash we agree to evaluate.
pub const MAX_STORED_PARALLELISM: u32 = 16;
/// Hash output length we produce, in bytes (the PHC/argon2 default).
pub(super) const OUTPUT_LEN: usize = 32;

/// Argon2id cost settings. The defaults are the platform guide's (64 MiB, 3 passes, 4 lanes),
/// not the `argon2` crate's lighter 19 MiB / t=2 / p=1.
///
/// Validated on deserialisation and again by
/// [`PasswordHasher::new`](super::PasswordHasher::new): each value must be at least Argon2's
/// minimum and at most the caps applied to stored hashes ([`MAX_STORED_MEMORY_KIB`] and
/// friends), otherwise this server would write hashes it refuses to read back. The floor is Argon2's own (8 KiB per lane) so tests can run cheaply; a
/// production configuration below OWASP's minimum (19 MiB, t=2) deserves a startup warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "RawArgon2Params")]
pub struct Argon2Params {
    /// Memory cost in KiB (`m`); each hash in flight holds this much.
    pub memory_kib: u32,
    /// Number of passes (`t`).
    pub iterations: u32,
    /// Number of lanes (`p`). The `argon2` crate computes lanes one after another on the
    /// calling thread (its `parallel` feature is off), so this raises cost, not thread use.
    pub parallelism: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self {
            memory_kib: 65_536,
            iterations: 3,
            parallelism: 4,
        }
    }
}

/// The serde shape of [`Argon2Params`] before validation; missing fields take the defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawArgon2Params {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

impl Default for RawArgon2Params {
    fn default() -> Self {
        let d = Argon2Params::default();
        Self {
            memory_kib: d.memory_kib,
            iterations: d.iterations,
            parallelism: d.parallelism,
        }
    }
}

impl TryFrom<RawArgon2Params> for Argon2Params {
    type Error = HasherConfigError;

    fn try_from(raw: RawArgon2Params) -> Result<Self, Self::Error> {
        Self::new(raw.memory_kib, raw.iterations, raw.parallelism)
    }
}

impl Argon2Params {
    /// Validated constructor.
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
    ) -> Result<Self, HasherConfigError> {
        let params = Self {
            memory_kib,
            iterations,
            parallelism,
        };
        params.validate()?;
        Ok(params)
    }

    /// Checks the ranges described on the type.
    pub fn validate(&self) -> Result<(), HasherConfigError> {
        let bad = |what: String| Err(HasherConfigError(what));
        if self.parallelism == 0 || self.parallelism > MAX_STORED_PARALLELISM {
            return bad(format!(
                "argon2 parallelism must be 1..={MAX_STORED_PARALLELISM}, got {}",
                self.parallelism
            ));
        }
        if self.iterations == 0 || self.iterations > MAX_STORED_ITERATIONS {
            return bad(format!(
                "argon2 iterations must be 1..={MAX_STORED_ITERATIONS}, got {}",
                self.iterations
            ));
        }
        // Argon2 needs at least 8 KiB per lane.
        let min_memory = 8 * self.parallelism;
        if self.memory_kib < min_memory || self.memory_kib > MAX_STORED_MEMORY_KIB {
            return bad(format!(
                "argon2 memory_kib must be {min_memory}..={MAX_STORED_MEMORY_KIB} (8 KiB per lane), got {}",
                self.memory_kib
            ));
        }
        self.to_argon2().map(drop)
    }

    /// The `argon2` crate's form, with our output length.
    pub(super) fn to_argon2(self) -> Result<argon2::Params, HasherConfigError> {
        argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(OUTPUT_LEN),
        )
        .map_err(|e| HasherConfigError(format!("argon2 parameters rejected: {e}")))
    }
}

/// A bad hasher setting (parameters, permits or queue timeout); a configuration error at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid password hashing settings: {0}")]
pub struct HasherConfigError(pub(super) String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_default_validate_and_deserialize() {
        let d = Argon2Params::default();
        assert_eq!((d.memory_kib, d.iterations, d.parallelism), (65_536, 3, 4));
        assert!(d.validate().is_ok());
        assert!(Argon2Params::new(0, 3, 4).is_err());
        assert!(Argon2Params::new(31, 1, 4).is_err()); // below 8 KiB per lane
        assert!(Argon2Params::new(65_536, 0, 4).is_err());
        assert!(Argon2Params::new(65_536, 3, 0).is_err());
        assert!(Argon2Params::new(MAX_STORED_MEMORY_KIB + 1, 3, 4).is_err());
        assert!(Argon2Params::new(65_536, MAX_STORED_ITERATIONS + 1, 4).is_err());
        assert!(Argon2Params::new(65_536, 3, MAX_STORED_PARALLELISM + 1).is_err());

        let p: Argon2Params = serde_yaml_ng::from_str("memory_kib: 19456\niterations: 2").unwrap();
        assert_eq!(
            p,
            Argon2Params {
                memory_kib: 19_456,
                iterations: 2,
                parallelism: 4
            }
        );
        let p: Argon2Params = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(p, Argon2Params::default());
        assert!(serde_yaml_ng::from_str::<Argon2Params>("iterations: 0").is_err());
        assert!(serde_yaml_ng::from_str::<Argon2Params>("memory: 10").is_err());
    }
}
