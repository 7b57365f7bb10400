//! Stored PHC strings: reading and capping a record's parameters before any Argon2 work, and
//! the dummy record spent on unknown users.

use argon2::Version;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};

use super::error::HashError;
use super::params::OUTPUT_LEN;
use super::{
    Argon2Params, HasherConfigError, MAX_STORED_ITERATIONS, MAX_STORED_MEMORY_KIB,
    MAX_STORED_PARALLELISM,
};

/// Salt length we produce, in bytes.
const SALT_LEN: usize = 16;
/// Longest stored string we even try to parse (a real argon2id PHC string is under 120 bytes).
const MAX_PHC_LEN: usize = 256;
/// The PHC version number of Argon2 1.3 (the only one we produce).
pub(super) const ARGON2_V13: u32 = 0x13;

/// A stored hash that passed every cap, ready to be evaluated.
#[derive(Debug)]
pub(super) struct Inspected {
    pub(super) hash: PasswordHash,
    pub(super) version: Version,
    pub(super) params: argon2::Params,
    pub(super) differs_from_config: bool,
}

/// Parses `phc` and applies the caps without doing any Argon2 work.
pub(super) fn inspect_stored(phc: &str, configured: &Argon2Params) -> Result<Inspected, HashError> {
    let untrusted = |why: &str| HashError::UntrustedHash(why.to_owned());
    if phc.len() > MAX_PHC_LEN {
        return Err(untrusted(
            "stored hash is too long to be an argon2id PHC string",
        ));
    }
    let hash = PasswordHash::new(phc)
        .map_err(|e| HashError::UntrustedHash(format!("not a PHC string: {e}")))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(untrusted("stored hash algorithm is not argon2id"));
    }
    // An absent version means 1.0 to the reference implementation but 1.3 to the `argon2`
    // crate; refuse the ambiguity rather than guess.
    let version = match hash.version {
        Some(v) => Version::try_from(v).map_err(|_| untrusted("unknown argon2 version"))?,
        None => return Err(untrusted("stored hash has no argon2 version")),
    };
    // Without explicit m, t and p the crate would fill in its own defaults.
    let (Some(m), Some(t), Some(p)) = (
        hash.params.get_decimal("m"),
        hash.params.get_decimal("t"),
        hash.params.get_decimal("p"),
    ) else {
        return Err(untrusted("stored hash lacks m, t or p"));
    };
    if m > MAX_STORED_MEMORY_KIB {
        return Err(untrusted("stored hash memory cost exceeds the cap"));
    }
    if t > MAX_STORED_ITERATIONS {
        return Err(untrusted("stored hash iteration count exceeds the cap"));
    }
    if p > MAX_STORED_PARALLELISM {
        return Err(untrusted("stored hash parallelism exceeds the cap"));
    }
    let (Some(salt), Some(output)) = (&hash.salt, &hash.hash) else {
        return Err(untrusted("stored hash lacks a salt or an output"));
    };
    // Also validates m >= 8p, rejects unknown parameter names, and takes the output length.
    let params = argon2::Params::try_from(&hash)
        .map_err(|e| HashError::UntrustedHash(format!("invalid argon2 parameters: {e}")))?;
    let differs_from_config = m != configured.memory_kib
        || t != configured.iterations
        || p != configured.parallelism
        || version != Version::V0x13
        || output.len() != OUTPUT_LEN
        || salt.as_ref().len() < SALT_LEN
        || !params.keyid().is_empty()
        || !params.data().is_empty();
    Ok(Inspected {
        hash,
        version,
        params,
        differs_from_config,
    })
}

/// Builds a PHC string with the configured parameters, a random salt and a random output. No
/// password hashes to it (a 2^-256 chance), and evaluating it costs exactly what a real record
/// with the configured parameters costs, which is all
/// [`PasswordHasher::verify_dummy`](super::PasswordHasher::verify_dummy) needs.
/// Building it takes no Argon2 work, so construction never blocks.
pub(super) fn make_dummy_phc(params: &Argon2Params) -> Result<String, HasherConfigError> {
    let internal =
        |what: &str| HasherConfigError(format!("could not build the dummy hash: {what}"));
    let argon = params.to_argon2()?;
    let salt_bytes =
        argon2::password_hash::try_generate_salt().map_err(|_| internal("OS RNG failed"))?;
    let (first, second) = (
        argon2::password_hash::try_generate_salt().map_err(|_| internal("OS RNG failed"))?,
        argon2::password_hash::try_generate_salt().map_err(|_| internal("OS RNG failed"))?,
    );
    let mut output_bytes = [0u8; OUTPUT_LEN];
    for (dst, src) in output_bytes
        .iter_mut()
        .zip(first.iter().chain(second.iter()))
    {
        *dst = *src;
    }
    let dummy = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(ARGON2_V13),
        params: ParamsString::try_from(&argon).map_err(|_| internal("params"))?,
        salt: Some(Salt::new(&salt_bytes).map_err(|_| internal("salt"))?),
        hash: Some(Output::new(&output_bytes).map_err(|_| internal("output"))?),
    };
    Ok(dummy.to_string())
}

/// A syntactically valid record with the given algorithm and parameter string (for the tests
/// here and the hasher's).
#[cfg(test)]
pub(super) fn record(alg: &str, params: &str) -> String {
    format!(
        "${alg}$v=19${params}$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_checked_before_parameters_are_built() {
        let cfg = Argon2Params::default();
        let at_cap = record("argon2id", "m=262144,t=10,p=16");
        let inspected = inspect_stored(&at_cap, &cfg).unwrap();
        assert!(inspected.differs_from_config);
        let current = record("argon2id", "m=65536,t=3,p=4");
        // The dummy output above is 32 bytes and the salt 16, so only the params could differ.
        assert!(!inspect_stored(&current, &cfg).unwrap().differs_from_config);
        let v16 = record("argon2id", "m=65536,t=3,p=4").replace("v=19", "v=16");
        assert!(inspect_stored(&v16, &cfg).unwrap().differs_from_config);
        let v99 = record("argon2id", "m=65536,t=3,p=4").replace("v=19", "v=99");
        assert!(matches!(
            inspect_stored(&v99, &cfg),
            Err(HashError::UntrustedHash(_))
        ));
    }
}
