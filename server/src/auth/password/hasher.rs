//! Argon2id hashing and verification behind a bounded queue of permits on low-priority threads.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Version};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::{Zeroize, Zeroizing};

use super::error::{HashError, NewPasswordError};
use super::params::OUTPUT_LEN;
use super::phc::{ARGON2_V13, Inspected, inspect_stored, make_dummy_phc};
use super::policy::{PasswordPolicy, check_not_common};
use super::{Argon2Params, HasherConfigError, Secret};
use crate::telemetry::metrics::{ARGON2_QUEUE_DEPTH, ARGON2_REJECTIONS};

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// The outcome of a verify that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matches the stored hash.
    pub matches: bool,
    /// The password matched and the stored hash uses other parameters (cost, version, output
    /// length) than the configured ones: hash the password again and store the new string.
    /// Always `false` when `matches` is `false` (without the right password there is nothing
    /// to rehash).
    pub needs_rehash: bool,
}

// ---------------------------------------------------------------------------------------------
// The bounded hasher
// ---------------------------------------------------------------------------------------------

/// How long a caller waits for a hashing permit by default.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most permits accepted; beyond this the memory bound stops meaning anything.
const MAX_PERMITS: usize = 1024;
/// Starting guess for one hash, before any has been measured (about one default-cost verify
/// on a small machine).
const INITIAL_HASH_ESTIMATE: Duration = Duration::from_millis(150);
/// Bounds of the [`HashError::Overloaded`] hint.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(100);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// One hashing permit per CPU: Argon2 is CPU-bound, so more in flight only adds memory and
/// latency.
pub fn default_permits() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Argon2id hashing and verification behind a bounded queue.
///
/// At most `permits` hashes run at once, each on one of `permits` low-priority hashing threads
/// while holding its permit, so Argon2 memory in flight is at most `permits × memory_kib` for
/// records with the configured cost; a legacy record with a larger cost,
/// up to [`MAX_STORED_MEMORY_KIB`], briefly raises that for its own permit. A caller that
/// cannot get a permit within `queue_timeout` gets [`HashError::Overloaded`] instead of
/// waiting without bound. A permit follows its work: if the caller's future is dropped, the
/// hash still finishes before its permit (and memory) is released.
///
/// Share one instance (e.g. in an `Arc`) across the server.
///
/// [`MAX_STORED_MEMORY_KIB`]: super::MAX_STORED_MEMORY_KIB
pub struct PasswordHasher {
    params: Argon2Params,
    argon2_params: argon2::Params,
    permits: usize,
    queue_timeout: Duration,
    semaphore: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Smoothed duration of one Argon2 evaluation, in microseconds (for the retry hint).
    typical_micros: AtomicU64,
    /// Blocking tasks started (tests use it to prove a refused record did no Argon2 work).
    evaluations: AtomicU64,
    /// Argon2 working memory, reused (this is what makes the memory bound hold).
    blocks: Arc<BlockPool>,
    /// One thread per permit, at a lower CPU priority than the async runtime (see
    /// [`HASHING_NICE`]), so a login storm slows logins rather than every check on the replica.
    workers: rayon::ThreadPool,
    dummy_phc: String,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The dummy hash is left out: it is harmless, but nothing stored belongs in logs.
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .field("permits", &self.permits)
            .field("available_permits", &self.semaphore.available_permits())
            .field("queue_timeout", &self.queue_timeout)
            .field("queue_depth", &self.queue_depth())
            .finish_non_exhaustive()
    }
}

/// A hashing permit taken ahead of its work by [`PasswordHasher::reserve`].
#[derive(Debug)]
pub struct HashPermit(OwnedSemaphorePermit);

/// Counts a caller as waiting until dropped (also when its future is cancelled).
struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(ARGON2_QUEUE_DEPTH).increment(1.0);
        Self(counter)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(ARGON2_QUEUE_DEPTH).decrement(1.0);
    }
}

impl PasswordHasher {
    /// A hasher with `permits` concurrent hashes and callers waiting at most `queue_timeout`.
    pub fn new(
        params: Argon2Params,
        permits: usize,
        queue_timeout: Duration,
    ) -> Result<Self, HasherConfigError> {
        params.validate()?;
        if permits == 0 || permits > MAX_PERMITS {
            return Err(HasherConfigError(format!(
                "hashing permits must be 1..={MAX_PERMITS}, got {permits}"
            )));
        }
        if queue_timeout.is_zero() {
            return Err(HasherConfigError(
                "hashing queue timeout must be positive".to_owned(),
            ));
        }
        let workers = rayon::ThreadPoolBuilder::new()
            .num_threads(permits)
            .thread_name(|i| format!("argon2-{i}"))
            .start_handler(|_| lower_thread_priority())
            .build()
            .map_err(|e| HasherConfigError(format!("cannot start the hashing threads: {e}")))?;
        Ok(Self {
            workers,
            argon2_params: params.to_argon2()?,
            params,
            permits,
            queue_timeout,
            semaphore: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            typical_micros: AtomicU64::new(duration_micros(INITIAL_HASH_ESTIMATE)),
            evaluations: AtomicU64::new(0),
            dummy_phc: make_dummy_phc(&params)?,
            blocks: Arc::new(BlockPool::new(params.memory_kib)),
        })
    }

    /// [`new`](Self::new) with [`default_permits`] and [`DEFAULT_QUEUE_TIMEOUT`].
    pub fn with_defaults(params: Argon2Params) -> Result<Self, HasherConfigError> {
        Self::new(params, default_permits(), DEFAULT_QUEUE_TIMEOUT)
    }

    /// The configured cost.
    pub fn params(&self) -> &Argon2Params {
        &self.params
    }

    /// Number of hashes allowed at once.
    pub fn permits(&self) -> usize {
        self.permits
    }

    /// Longest wait for a permit before [`HashError::Overloaded`].
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// Argon2 memory in flight when every permit is busy with a configured-cost hash:
    /// `permits × memory_kib × 1024` bytes (excluding thread stacks and allocator slack).
    pub fn memory_bound_bytes(&self) -> u64 {
        u64::try_from(self.permits)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.params.memory_kib))
            .saturating_mul(1024)
    }

    /// Callers currently waiting for a permit (a gauge for metrics).
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Hashes a new password: Argon2id v1.3 with the configured cost and a fresh 16-byte salt
    /// from the OS RNG, as a PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    ///
    /// Does not apply the [`PasswordPolicy`]; check that first.
    pub async fn hash(&self, password: &Secret) -> Result<String, HashError> {
        let permit = self.acquire().await?;
        let pwd = copy_for_task(password);
        let argon2_params = self.argon2_params.clone();
        let pool = Arc::clone(&self.blocks);
        self.run_blocking(permit, move || hash_blocking(argon2_params, &pwd, &pool))
            .await
    }

    /// Checks a new password against `policy` and hashes it, for registration and password
    /// change.
    ///
    /// The cheap rules run at once; the common-password check (zxcvbn, up to ~50 ms of CPU)
    /// and the hash then run together in one blocking task under one permit, so neither blocks
    /// an async worker and a burst of long passwords is bounded like a burst of hashes.
    /// `context` lists words the attacker knows (username, e-mail) that must not make up the
    /// password.
    pub async fn hash_new(
        &self,
        policy: PasswordPolicy,
        password: &Secret,
        context: &[&str],
    ) -> Result<String, NewPasswordError> {
        policy.check_rules(password.expose())?;
        let permit = self.acquire().await?;
        let pwd = Zeroizing::new(password.expose().to_owned());
        let context: Vec<String> = context.iter().map(|&c| c.to_owned()).collect();
        let argon2_params = self.argon2_params.clone();
        let pool = Arc::clone(&self.blocks);
        self.run_blocking(permit, move || {
            let context: Vec<&str> = context.iter().map(String::as_str).collect();
            check_not_common(&pwd, &context)?;
            Ok(hash_blocking(argon2_params, pwd.as_bytes(), &pool)?)
        })
        .await
    }

    /// Verifies `password` against a stored PHC string.
    ///
    /// The record is checked first, without taking a permit: a malformed record, one not
    /// Argon2id, or one whose m/t/p exceed [`MAX_STORED_MEMORY_KIB`] /
    /// [`MAX_STORED_ITERATIONS`] / [`MAX_STORED_PARALLELISM`] is refused as
    /// [`HashError::UntrustedHash`] and never evaluated.
    ///
    /// [`MAX_STORED_MEMORY_KIB`]: super::MAX_STORED_MEMORY_KIB
    /// [`MAX_STORED_ITERATIONS`]: super::MAX_STORED_ITERATIONS
    /// [`MAX_STORED_PARALLELISM`]: super::MAX_STORED_PARALLELISM
    pub async fn verify(&self, password: &Secret, phc: &str) -> Result<Verified, HashError> {
        let inspected = inspect_stored(phc, &self.params)?;
        let permit = self.acquire().await?;
        let pwd = copy_for_task(password);
        let pool = Arc::clone(&self.blocks);
        self.run_blocking(permit, move || evaluate(&inspected, &pwd, &pool))
            .await
    }

    /// Spends the same work as a [`verify`](Self::verify) of a wrong password against a
    /// configured-cost record, and never matches. Call it when the user does not exist, so an
    /// unknown user takes as long as a wrong password (against user enumeration, ASVS 6.3.8),
    /// and report the same error for both.
    pub async fn verify_dummy(&self, password: &Secret) -> Result<(), HashError> {
        // Same path as a real record: parse and cap, permit, blocking evaluation.
        self.verify(password, &self.dummy_phc).await.map(drop)
    }

    /// Takes a hashing permit now (or fails with [`HashError::Overloaded`]) for a
    /// [`verify_reserved`](Self::verify_reserved) later: a caller that must record something
    /// before evaluating (a login attempt) learns of overload before recording anything.
    pub async fn reserve(&self) -> Result<HashPermit, HashError> {
        self.acquire().await.map(HashPermit)
    }

    /// [`verify`](Self::verify) with a permit already held; `None` for `phc` spends a dummy
    /// verify instead (see [`verify_dummy`](Self::verify_dummy)) and never matches.
    pub async fn verify_reserved(
        &self,
        permit: HashPermit,
        password: &Secret,
        phc: Option<&str>,
    ) -> Result<Verified, HashError> {
        let dummy = phc.is_none();
        let inspected = inspect_stored(phc.unwrap_or(&self.dummy_phc), &self.params)?;
        let pwd = copy_for_task(password);
        let pool = Arc::clone(&self.blocks);
        let verified = self
            .run_blocking(permit.0, move || evaluate(&inspected, &pwd, &pool))
            .await?;
        Ok(if dummy {
            Verified {
                matches: false,
                needs_rehash: false,
            }
        } else {
            verified
        })
    }

    async fn acquire(&self) -> Result<OwnedSemaphorePermit, HashError> {
        let waiting = WaitingGuard::enter(&self.waiting);
        let acquired = tokio::time::timeout(
            self.queue_timeout,
            Arc::clone(&self.semaphore).acquire_owned(),
        )
        .await;
        let ahead = self.queue_depth();
        drop(waiting);
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(HashError::Internal("hashing semaphore closed".to_owned())),
            Err(_elapsed) => {
                metrics::counter!(ARGON2_REJECTIONS).increment(1);
                Err(HashError::Overloaded {
                    retry_after: self.retry_hint(ahead),
                })
            }
        }
    }

    /// Typical hash time × the rounds needed to drain `waiting` callers through the permits.
    fn retry_hint(&self, waiting: usize) -> Duration {
        let typical = Duration::from_micros(self.typical_micros.load(Ordering::Relaxed));
        let rounds =
            u32::try_from(waiting.div_ceil(self.permits).saturating_add(1)).unwrap_or(u32::MAX);
        typical
            .saturating_mul(rounds)
            .clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
    }

    /// Runs `work` on a hashing thread; the permit is moved into the job and released only
    /// when the work is done, even if the calling future was dropped.
    async fn run_blocking<T, E, F>(&self, permit: OwnedSemaphorePermit, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<HashError> + Send + 'static,
        F: FnOnce() -> Result<T, E> + Send + 'static,
    {
        self.evaluations.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = tokio::sync::oneshot::channel();
        // Holding a permit means a thread is free: the pool never queues.
        self.workers.spawn(move || {
            let started = Instant::now();
            // Caught here: rayon aborts the process on a panic that leaves a spawned job.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let elapsed = started.elapsed();
            drop(permit);
            let _ = done.send((result, elapsed));
        });
        match answer.await {
            Ok((Ok(result), elapsed)) => {
                self.record_duration(elapsed);
                result
            }
            Ok((Err(_), _)) => Err(HashError::Internal("hashing task panicked".to_owned()).into()),
            Err(_) => Err(HashError::Internal("hashing task was dropped".to_owned()).into()),
        }
    }

    /// Exponentially weighted moving average (1/8 weight on the newest sample).
    fn record_duration(&self, elapsed: Duration) {
        let sample = duration_micros(elapsed);
        // A lost update between racing callers only skews a hint.
        let old = self.typical_micros.load(Ordering::Relaxed);
        let new = old - old / 8 + sample / 8;
        self.typical_micros.store(new.max(1), Ordering::Relaxed);
    }
}

/// Nice value of the hashing threads. Argon2 keeps a core busy for about 150 ms per login; at
/// the runtime's priority, a login storm on a replica with as many permits as cores pushed the
/// p99 of concurrent rate-limit checks from under 1 ms to about 6 ms. At nice 10 the kernel
/// gives a runtime thread about nine tenths of a contended core, and hashing still takes every
/// idle cycle.
const HASHING_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`HASHING_NICE`] (on Linux the nice value is per
/// thread, and raising it needs no privilege). Failure only costs latency, so it is logged.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASHING_NICE)
    {
        tracing::warn!(error = %e, "cannot lower the priority of a hashing thread");
    }
}

fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The one copy of the password that crosses into the blocking task: moved in, zeroed on drop.
fn copy_for_task(password: &Secret) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(password.expose().as_bytes().to_vec())
}

/// Argon2 working memory, one buffer per permit, reused from hash to hash.
///
/// Allocating 64 MiB per hash and freeing it leaves the allocator holding freed buffers for a
/// while, so a login flood's resident memory drifted above `permits × memory_kib`. Buffers
/// that live as long as the hasher make that product the real bound: at most one buffer per
/// permit exists (a permit holder takes one), each wiped after use.
struct BlockPool {
    /// Idle buffers, each `blocks` long.
    idle: parking_lot::Mutex<Vec<Box<[Block]>>>,
    /// Blocks of the configured cost (`memory_kib`, 1 KiB each).
    blocks: usize,
}

impl BlockPool {
    fn new(memory_kib: u32) -> Self {
        Self {
            idle: parking_lot::Mutex::new(Vec::new()),
            blocks: usize::try_from(memory_kib).unwrap_or(usize::MAX),
        }
    }

    /// Runs `work` with at least `needed` blocks: a pooled buffer when the configured size
    /// suffices (the usual case), else a one-off buffer for a larger legacy record (capped by
    /// [`MAX_STORED_MEMORY_KIB`]). The buffer is wiped afterwards: it holds values derived
    /// from the password.
    ///
    /// [`MAX_STORED_MEMORY_KIB`]: super::MAX_STORED_MEMORY_KIB
    fn with_blocks<T>(&self, needed: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
        if needed > self.blocks {
            let mut one_off = vec![Block::default(); needed].into_boxed_slice();
            let result = work(&mut one_off);
            one_off.zeroize();
            return result;
        }
        let pooled = self.idle.lock().pop();
        let mut buffer =
            pooled.unwrap_or_else(|| vec![Block::default(); self.blocks].into_boxed_slice());
        let result = work(&mut buffer);
        buffer.zeroize();
        self.idle.lock().push(buffer);
        result
    }
}

/// The Argon2 work of a new hash (blocking; call on a hashing thread): Argon2id v1.3, a fresh
/// 16-byte salt from the OS RNG.
fn hash_blocking(
    params: argon2::Params,
    pwd: &[u8],
    pool: &BlockPool,
) -> Result<String, HashError> {
    let failed = |e: &dyn fmt::Display| HashError::Internal(format!("argon2 hash failed: {e}"));
    let salt = argon2::password_hash::try_generate_salt().map_err(|e| failed(&e))?;
    let mut out = Zeroizing::new([0u8; OUTPUT_LEN]);
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    pool.with_blocks(params.block_count(), |blocks| {
        argon.hash_password_into_with_memory(pwd, &salt, out.as_mut_slice(), blocks)
    })
    .map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(ARGON2_V13),
        params: ParamsString::try_from(&params).map_err(|e| failed(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| failed(&e))?),
        hash: Some(Output::new(out.as_slice()).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// The Argon2 work of a verify (blocking; call on a hashing thread): recomputes with the
/// record's own salt and (already capped) parameters, and compares in constant time.
fn evaluate(inspected: &Inspected, pwd: &[u8], pool: &BlockPool) -> Result<Verified, HashError> {
    let failed = |e: &dyn fmt::Display| HashError::Internal(format!("argon2 verify failed: {e}"));
    let (Some(salt), Some(expected)) = (&inspected.hash.salt, &inspected.hash.hash) else {
        return Err(HashError::UntrustedHash(
            "stored hash lacks a salt or an output".to_owned(),
        ));
    };
    let expected = expected.as_ref();
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    let argon = Argon2::new(
        Algorithm::Argon2id,
        inspected.version,
        inspected.params.clone(),
    );
    pool.with_blocks(inspected.params.block_count(), |blocks| {
        argon.hash_password_into_with_memory(pwd, salt.as_ref(), &mut out, blocks)
    })
    .map_err(|e| failed(&e))?;
    let matches = bool::from(out.as_slice().ct_eq(expected));
    Ok(Verified {
        matches,
        needs_rehash: matches && inspected.differs_from_config,
    })
}

#[cfg(test)]
mod tests {
    use super::super::phc::record;
    use super::super::policy::PolicyRule;
    use super::*;

    /// A password every policy accepts.
    const STRONG: &str = "Tr0ub4dor&3-horse-Battery";

    fn secret(s: &str) -> Secret {
        Secret::from(s.to_owned())
    }

    /// Fast parameters for tests that only need a working hash.
    fn small() -> Argon2Params {
        Argon2Params::new(1024, 1, 1).unwrap()
    }

    fn small_hasher(permits: usize, queue_timeout: Duration) -> PasswordHasher {
        PasswordHasher::new(small(), permits, queue_timeout).unwrap()
    }

    // ----- hashing threads ---------------------------------------------------------------------

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_at_a_lower_priority_than_the_runtime() {
        let nice_here =
            || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let h = small_hasher(2, Duration::from_secs(1));
        let permit = h.acquire().await.unwrap();
        let on_hashing_thread = h
            .run_blocking(permit, move || Ok::<_, HashError>(nice_here()))
            .await
            .unwrap();
        assert_eq!(on_hashing_thread, HASHING_NICE);
        assert_eq!(nice_here(), 0, "the runtime thread keeps its priority");
    }

    #[tokio::test]
    async fn a_panicking_hash_is_an_error_and_frees_its_permit() {
        let h = small_hasher(1, Duration::from_millis(500));
        let permit = h.acquire().await.unwrap();
        let failed = h
            .run_blocking(permit, || -> Result<(), HashError> {
                panic!("argon2 blew up")
            })
            .await;
        assert!(matches!(failed, Err(HashError::Internal(_))), "{failed:?}");
        // The only permit came back, and the thread still works.
        assert!(h.verify_dummy(&secret(STRONG)).await.is_ok());
    }

    // ----- parameters -------------------------------------------------------------------------

    #[test]
    fn hasher_settings_are_validated() {
        assert!(PasswordHasher::new(small(), 0, DEFAULT_QUEUE_TIMEOUT).is_err());
        assert!(PasswordHasher::new(small(), 1, Duration::ZERO).is_err());
        let bad = Argon2Params {
            memory_kib: 4,
            iterations: 1,
            parallelism: 1,
        };
        assert!(PasswordHasher::new(bad, 1, DEFAULT_QUEUE_TIMEOUT).is_err());
        assert!(PasswordHasher::with_defaults(small()).unwrap().permits() >= 1);
    }

    // ----- hashing ----------------------------------------------------------------------------

    #[tokio::test]
    async fn hash_then_verify() {
        let h = small_hasher(2, DEFAULT_QUEUE_TIMEOUT);
        let phc = h.hash(&secret(STRONG)).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{phc}");
        let ok = h.verify(&secret(STRONG), &phc).await.unwrap();
        assert_eq!(
            ok,
            Verified {
                matches: true,
                needs_rehash: false
            }
        );
        let wrong = h
            .verify(&secret("Tr0ub4dor&3-horse-Battery "), &phc)
            .await
            .unwrap();
        assert_eq!(
            wrong,
            Verified {
                matches: false,
                needs_rehash: false
            }
        );
        // Compared exactly as sent: case and Unicode form matter.
        let composed = h.hash(&secret("Caf\u{e9}-Vq7#kLm2")).await.unwrap();
        let decomposed = h
            .verify(&secret("Cafe\u{301}-Vq7#kLm2"), &composed)
            .await
            .unwrap();
        assert!(!decomposed.matches);
    }

    #[tokio::test]
    async fn same_password_hashes_differ_by_salt() {
        let h = small_hasher(2, DEFAULT_QUEUE_TIMEOUT);
        let a = h.hash(&secret(STRONG)).await.unwrap();
        let b = h.hash(&secret(STRONG)).await.unwrap();
        assert_ne!(a, b);
        let salt = |phc: &str| phc.split('$').nth(4).map(str::to_owned);
        assert_ne!(salt(&a), salt(&b));
        // 16 bytes of salt are 22 B64 characters.
        assert_eq!(salt(&a).map(|s| s.len()), Some(22));
        assert!(h.verify(&secret(STRONG), &a).await.unwrap().matches);
        assert!(h.verify(&secret(STRONG), &b).await.unwrap().matches);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn default_params_produce_the_guide_phc() {
        let h = PasswordHasher::with_defaults(Argon2Params::default()).unwrap();
        let phc = h.hash(&secret(STRONG)).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=65536,t=3,p=4$"), "{phc}");
        assert!(h.verify(&secret(STRONG), &phc).await.unwrap().matches);
        assert_eq!(
            h.memory_bound_bytes(),
            h.permits() as u64 * 64 * 1024 * 1024
        );
    }

    #[tokio::test]
    async fn needs_rehash_when_configured_params_change() {
        let old = small_hasher(1, DEFAULT_QUEUE_TIMEOUT);
        let phc = old.hash(&secret(STRONG)).await.unwrap();
        let new = PasswordHasher::new(
            Argon2Params::new(2048, 2, 1).unwrap(),
            1,
            DEFAULT_QUEUE_TIMEOUT,
        )
        .unwrap();
        let v = new.verify(&secret(STRONG), &phc).await.unwrap();
        assert_eq!(
            v,
            Verified {
                matches: true,
                needs_rehash: true
            }
        );
        // A wrong password never asks for a rehash.
        let v = new.verify(&secret("nope"), &phc).await.unwrap();
        assert_eq!(
            v,
            Verified {
                matches: false,
                needs_rehash: false
            }
        );
        // The rehashed record is current.
        let fresh = new.hash(&secret(STRONG)).await.unwrap();
        assert!(
            !new.verify(&secret(STRONG), &fresh)
                .await
                .unwrap()
                .needs_rehash
        );
    }

    #[tokio::test]
    async fn over_cap_and_foreign_records_are_refused_without_evaluation() {
        // Every permit is held and the queue timeout is long: if a refused record went anywhere
        // near the Argon2 work it would wait for a permit (and end Overloaded), not come back
        // UntrustedHash; and the evaluation counter proves nothing ran.
        let h = small_hasher(1, Duration::from_secs(30));
        let _held = Arc::clone(&h.semaphore).acquire_owned().await.unwrap();
        let refused = [
            record("argon2id", "m=4194304,t=3,p=4"),
            record("argon2id", "m=262145,t=1,p=1"),
            record("argon2id", "m=65536,t=1000,p=4"),
            record("argon2id", "m=65536,t=11,p=4"),
            record("argon2id", "m=65536,t=3,p=17"),
            record("argon2i", "m=65536,t=3,p=4"),
            record("argon2d", "m=65536,t=3,p=4"),
            record("argon2id", "m=65536,t=3"),
            record("argon2id", "m=65536,t=3,p=4,x=1"),
            "$argon2id$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0c2FsdA".to_owned(),
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW".to_owned(),
            "$pbkdf2-sha256$29000$N2bMmZMyJkQoRYhxTolRKg$".to_owned(),
        ];
        let started = Instant::now();
        for phc in &refused {
            match h.verify(&secret(STRONG), phc).await {
                Err(HashError::UntrustedHash(reason)) => {
                    assert!(
                        !reason.contains(phc.as_str()),
                        "reason quotes the record: {reason}"
                    )
                }
                other => panic!("{phc} must be UntrustedHash, got {other:?}"),
            }
        }
        assert_eq!(h.evaluations.load(Ordering::Relaxed), 0);
        assert_eq!(h.queue_depth(), 0);
        // Not a timing assertion of the cap itself, only that nothing waited for the permit.
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn garbage_is_untrusted_not_a_panic() {
        let h = small_hasher(1, DEFAULT_QUEUE_TIMEOUT);
        let long = "$".repeat(10_000);
        let garbage = [
            "",
            "$",
            "$$$$$$",
            "argon2id",
            "$argon2id",
            "$argon2id$v=19",
            "$argon2id$v=19$m=a,t=b,p=c$salt$hash",
            "$argon2id$v=19$m=65536,t=3,p=4$!!!!$????",
            "$argon2id$v=19$m=-1,t=3,p=4$c2FsdHNhbHRzYWx0c2FsdA$AAAA",
            "$argon2id$v=19$m=99999999999999999999,t=3,p=4$c2FsdHNhbHRzYWx0c2FsdA$AAAA",
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "\u{0}\u{1}\u{2}",
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA$extra",
            "$argon2id$v=19$m=8,t=1,p=4$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0c2FsdA$AAAA",
            "🔒🔒🔒",
            &long,
        ];
        for phc in garbage {
            let r = h.verify(&secret(STRONG), phc).await;
            assert!(
                matches!(r, Err(HashError::UntrustedHash(_))),
                "{phc:?} gave {r:?}"
            );
        }
        assert_eq!(h.evaluations.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn dummy_verify_uses_configured_params_and_never_matches() {
        let h = small_hasher(1, DEFAULT_QUEUE_TIMEOUT);
        assert!(
            h.dummy_phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
            "{}",
            h.dummy_phc
        );
        let inspected = inspect_stored(&h.dummy_phc, h.params()).unwrap();
        assert!(
            !inspected.differs_from_config,
            "the dummy must cost what a current record costs"
        );
        for pw in ["", STRONG, "anything"] {
            assert_eq!(h.verify_dummy(&secret(pw)).await, Ok(()));
            assert!(!h.verify(&secret(pw), &h.dummy_phc).await.unwrap().matches);
        }
        // It did real Argon2 work every time (so it takes as long as a wrong password).
        assert_eq!(h.evaluations.load(Ordering::Relaxed), 6);
        // And it goes through the same queue.
        let busy = small_hasher(1, Duration::from_millis(20));
        let _held = Arc::clone(&busy.semaphore).acquire_owned().await.unwrap();
        assert!(matches!(
            busy.verify_dummy(&secret(STRONG)).await,
            Err(HashError::Overloaded { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dummy_and_wrong_password_cost_about_the_same() {
        // Default-cost work so the comparison is meaningful; medians of a few runs each.
        let h = PasswordHasher::new(
            Argon2Params::new(16_384, 2, 1).unwrap(),
            1,
            DEFAULT_QUEUE_TIMEOUT,
        )
        .unwrap();
        let phc = h.hash(&secret(STRONG)).await.unwrap();
        let mut wrong = Vec::new();
        let mut dummy = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            assert!(
                !h.verify(&secret("wrong password"), &phc)
                    .await
                    .unwrap()
                    .matches
            );
            wrong.push(t.elapsed());
            let t = Instant::now();
            h.verify_dummy(&secret("wrong password")).await.unwrap();
            dummy.push(t.elapsed());
        }
        wrong.sort();
        dummy.sort();
        let (w, d) = (wrong[2].as_secs_f64(), dummy[2].as_secs_f64());
        assert!(d > w / 3.0 && d < w * 3.0, "wrong {w:.4}s vs dummy {d:.4}s");
    }

    // ----- the bounded queue ------------------------------------------------------------------

    #[tokio::test]
    async fn overloaded_when_no_permit_frees_in_time() {
        let h = Arc::new(small_hasher(1, Duration::from_millis(50)));
        // Test hook: hold the only permit, as a slow verify would.
        let held = Arc::clone(&h.semaphore).acquire_owned().await.unwrap();
        let started = Instant::now();
        let r = h.hash(&secret(STRONG)).await;
        let waited = started.elapsed();
        match r {
            Err(HashError::Overloaded { retry_after }) => {
                assert!(retry_after >= MIN_RETRY_AFTER && retry_after <= MAX_RETRY_AFTER);
            }
            other => panic!("expected Overloaded, got {other:?}"),
        }
        assert!(
            waited >= Duration::from_millis(50),
            "gave up before the queue timeout"
        );
        assert_eq!(
            h.queue_depth(),
            0,
            "a timed-out caller must leave the queue"
        );
        // Once the permit is free, work goes through again.
        drop(held);
        assert!(h.hash(&secret(STRONG)).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overloaded_while_a_real_slow_verify_runs() {
        // permits=1, queue 50 ms, and a verify that takes far longer than 50 ms.
        let slow = Argon2Params::new(65_536, 3, 4).unwrap();
        let h = Arc::new(PasswordHasher::new(slow, 1, Duration::from_millis(50)).unwrap());
        let phc = h.hash(&secret(STRONG)).await.unwrap();
        let first = {
            let h = Arc::clone(&h);
            tokio::spawn(async move { h.verify(&secret(STRONG), &phc).await })
        };
        // Wait until the first verify holds the permit.
        while h.semaphore.available_permits() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let second = h.verify_dummy(&secret(STRONG)).await;
        assert!(
            matches!(second, Err(HashError::Overloaded { .. })),
            "got {second:?}"
        );
        assert!(first.await.unwrap().unwrap().matches);
    }

    #[tokio::test]
    async fn queue_depth_counts_waiting_callers() {
        let h = Arc::new(small_hasher(1, Duration::from_secs(10)));
        let held = Arc::clone(&h.semaphore).acquire_owned().await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let h = Arc::clone(&h);
            waiters.push(tokio::spawn(async move { h.hash(&secret(STRONG)).await }));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.queue_depth() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(h.queue_depth(), 3);
        assert!(format!("{h:?}").contains("queue_depth: 3"));
        // The retry hint grows with the queue.
        assert!(h.retry_hint(3) > h.retry_hint(0) || h.retry_hint(0) == MAX_RETRY_AFTER);
        drop(held);
        for w in waiters {
            assert!(w.await.unwrap().is_ok());
        }
        assert_eq!(h.queue_depth(), 0);
        // A cancelled waiter leaves the queue too.
        let held = Arc::clone(&h.semaphore).acquire_owned().await.unwrap();
        let cancelled = {
            let h = Arc::clone(&h);
            tokio::spawn(async move { h.hash(&secret(STRONG)).await })
        };
        while h.queue_depth() < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cancelled.abort();
        let _ = cancelled.await;
        assert_eq!(h.queue_depth(), 0);
        drop(held);
    }

    #[test]
    fn hashing_runs_off_the_async_runtime() {
        // One runtime thread: if Argon2 ran on it, the ticker could not tick meanwhile.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let h = Arc::new(
                PasswordHasher::new(
                    Argon2Params::new(65_536, 3, 4).unwrap(),
                    2,
                    DEFAULT_QUEUE_TIMEOUT,
                )
                .unwrap(),
            );
            let ticks = Arc::new(AtomicU64::new(0));
            let ticker = {
                let ticks = Arc::clone(&ticks);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        ticks.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            let started = Instant::now();
            let phc = h.hash(&secret(STRONG)).await.unwrap();
            let (pw_a, pw_b) = (secret(STRONG), secret(STRONG));
            let (a, b) = tokio::join!(h.verify(&pw_a, &phc), h.verify_dummy(&pw_b));
            assert!(a.unwrap().matches);
            b.unwrap();
            let elapsed_ms = started.elapsed().as_millis() as u64;
            ticker.abort();
            let ticks = ticks.load(Ordering::Relaxed);
            // A 1 ms sleep loop ticks about once per millisecond; had Argon2 run on the runtime
            // thread it could tick only between hashes (a handful of times). The margin is wide
            // for a loaded CI machine.
            assert!(
                elapsed_ms >= 50,
                "the work was too quick to prove anything ({elapsed_ms} ms)"
            );
            assert!(
                ticks >= 10 && ticks >= elapsed_ms / 20,
                "{ticks} ticks in {elapsed_ms} ms: the runtime was blocked"
            );
        });
    }

    #[test]
    fn memory_bound_is_permits_times_memory() {
        let h = PasswordHasher::new(
            Argon2Params::new(65_536, 3, 4).unwrap(),
            3,
            DEFAULT_QUEUE_TIMEOUT,
        )
        .unwrap();
        assert_eq!(h.memory_bound_bytes(), 3 * 65_536 * 1024);
        assert_eq!(h.queue_depth(), 0);
    }

    // ----- new passwords ----------------------------------------------------------------------

    #[tokio::test]
    async fn hash_new_applies_the_policy_then_hashes() {
        let h = small_hasher(1, DEFAULT_QUEUE_TIMEOUT);
        let guide = PasswordPolicy::Guide;
        let phc = h.hash_new(guide, &secret(STRONG), &[]).await.unwrap();
        assert!(h.verify(&secret(STRONG), &phc).await.unwrap().matches);
        // A cheap rule fails before any permit or blocking work.
        let short = h.hash_new(guide, &secret("Sh0rt!x"), &[]).await;
        assert!(
            matches!(&short, Err(NewPasswordError::Policy(v)) if v.rule == PolicyRule::TooShort),
            "{short:?}"
        );
        assert_eq!(h.evaluations.load(Ordering::Relaxed), 2);
        // The common check runs in the blocking task and stops the hash.
        let common = h.hash_new(guide, &secret("P@ssw0rd1234"), &[]).await;
        assert!(
            matches!(&common, Err(NewPasswordError::Policy(v)) if v.rule == PolicyRule::Common),
            "{common:?}"
        );
        let named = h
            .hash_new(guide, &secret("Portcullis2024!"), &["portcullis"])
            .await;
        assert!(
            matches!(&named, Err(NewPasswordError::Policy(v)) if v.rule == PolicyRule::Common),
            "{named:?}"
        );
        // And it queues like a hash.
        let busy = small_hasher(1, Duration::from_millis(20));
        let _held = Arc::clone(&busy.semaphore).acquire_owned().await.unwrap();
        let r = busy.hash_new(guide, &secret(STRONG), &[]).await;
        assert!(
            matches!(r, Err(NewPasswordError::Hash(HashError::Overloaded { .. }))),
            "{r:?}"
        );
    }

    // ----- debug output -----------------------------------------------------------------------

    #[test]
    fn hasher_debug_shows_no_secret() {
        let h = small_hasher(1, DEFAULT_QUEUE_TIMEOUT);
        let dbg = format!("{h:?}");
        assert!(
            dbg.contains("PasswordHasher") && dbg.contains("permits"),
            "{dbg}"
        );
        assert!(
            !dbg.contains(&h.dummy_phc),
            "Debug must not print the dummy hash"
        );
        assert!(!dbg.contains("$argon2id$"));
        let err = HashError::UntrustedHash("stored hash memory cost exceeds the cap".to_owned());
        assert!(!format!("{err:?}{err}").contains('$'));
    }

    #[tokio::test]
    async fn hashes_interoperate_with_the_argon2_crates_own_hasher() {
        use argon2::{PasswordHasher as _, PasswordVerifier as _};
        let h = small_hasher(1, DEFAULT_QUEUE_TIMEOUT);
        let ours = h.hash(&secret(STRONG)).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        let reference = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            small().to_argon2().unwrap(),
        );
        assert!(
            reference
                .verify_password(STRONG.as_bytes(), &parsed)
                .is_ok()
        );
        assert!(reference.verify_password(b"wrong", &parsed).is_err());

        let theirs = reference
            .hash_password(STRONG.as_bytes())
            .unwrap()
            .to_string();
        assert!(h.verify(&secret(STRONG), &theirs).await.unwrap().matches);
        assert!(!h.verify(&secret("wrong"), &theirs).await.unwrap().matches);
        // A record with a larger cost than configured runs on a one-off buffer.
        let bigger = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Argon2Params::new(2048, 1, 1).unwrap().to_argon2().unwrap(),
        )
        .hash_password(STRONG.as_bytes())
        .unwrap()
        .to_string();
        let v = h.verify(&secret(STRONG), &bigger).await.unwrap();
        assert!(v.matches && v.needs_rehash);
    }
}
