//! Password hashing with argon2id at OWASP's minimum parameters (m=19 MiB, t=2, p=1),
//! on the blocking pool so a sign-in never stalls the async workers — at most one
//! hash per core at a time ([`HASHING`]): each needs 19 MiB, and unbounded, a burst
//! of sign-ins ran one per blocking thread (up to 512) and grew the process by
//! gigabytes. Waiting for a turn is bounded too ([`QUEUE_DEADLINE`], then 503).
//!
//! Each turn hashes in a 19 MiB block set kept for the next one ([`MEMORY`]) instead
//! of one the argon2 crate allocates per hash: memory fresh from the system costs
//! 4,864 page faults per hash, which on this VM took 7 ms of kernel time — a
//! sign-in cost 21 ms of CPU against 14 ms for the hash (auth-bench). The blocks
//! are fully overwritten by every hash, so nothing of one password reaches another.

use std::sync::{LazyLock, Mutex, OnceLock};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordVerifier, Version};

use crate::error::{AuthError, Result};

pub(crate) const MIN_PASSWORD_BYTES: usize = 8;
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;
const OUTPUT_BYTES: usize = 32;

/// One hash per core at once.
static HASHING: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::sync::Semaphore::new(cores)
});

/// The block sets of finished turns, at most one per permit of [`HASHING`].
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// How long a request waits for a hashing turn before it is told to retry (503).
const QUEUE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `work` on the blocking pool once a hashing turn is free, with that turn's
/// block set.
async fn with_turn<T: Send + 'static>(
    work: impl FnOnce(&mut [Block]) -> T + Send + 'static,
) -> Result<T> {
    let _turn = tokio::time::timeout(QUEUE_DEADLINE, HASHING.acquire())
        .await
        .map_err(|_| AuthError::Busy)?
        .map_err(|e| AuthError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let kept = MEMORY.lock().ok().and_then(|mut kept| kept.pop());
        let mut blocks = kept.unwrap_or_else(|| vec![Block::default(); params().block_count()]);
        let out = work(&mut blocks);
        if let Ok(mut kept) = MEMORY.lock() {
            kept.push(blocks);
        }
        out
    })
    .await
    .map_err(|e| AuthError::Internal(e.to_string()))
}

fn params() -> Params {
    #[allow(clippy::expect_used)]
    Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, Some(OUTPUT_BYTES))
        .expect("constant argon2 parameters are valid")
}

pub(crate) fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
}

/// The PHC string of `password` hashed with `salt` in `blocks`.
fn hash_in(blocks: &mut [Block], password: &[u8], salt: &[u8]) -> Result<String> {
    let internal =
        |e: &dyn std::fmt::Display| AuthError::Internal(format!("hashing a password: {e}"));
    let mut out = [0u8; OUTPUT_BYTES];
    hasher()
        .hash_password_into_with_memory(password, salt, &mut out, blocks)
        .map_err(|e| internal(&e))?;
    let hash = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params()).map_err(|e| internal(&e))?,
        salt: Some(Salt::new(salt).map_err(|e| internal(&e))?),
        hash: Some(Output::new(&out).map_err(|e| internal(&e))?),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches `stored`. A hash made with our parameters is computed
/// in `blocks`; one with others (made before a change of parameters) by the crate,
/// which allocates its own.
fn verify_in(blocks: &mut [Block], password: &[u8], stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let ours = parsed.algorithm == argon2::ARGON2ID_IDENT
        && parsed.version == Some(Version::V0x13.into())
        && Params::try_from(&parsed).is_ok_and(|p| p == params());
    match (ours, &parsed.salt, &parsed.hash) {
        (true, Some(salt), Some(expected)) => {
            let mut out = [0u8; OUTPUT_BYTES];
            hasher()
                .hash_password_into_with_memory(password, salt.as_ref(), &mut out, blocks)
                .is_ok()
                // `Output`'s equality is constant-time.
                && Output::new(&out).is_ok_and(|computed| &computed == expected)
        }
        _ => hasher().verify_password(password, &parsed).is_ok(),
    }
}

/// A hash of a password nobody has, verified against when the email is unknown so
/// that "no such user" and "wrong password" take the same time. Made on first use,
/// inside a hashing turn and in its memory, like every other hash.
static DUMMY_HASH: OnceLock<String> = OnceLock::new();

pub(crate) fn check_length(password: &str) -> Result<()> {
    let len = password.len();
    if !(MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&len) {
        return Err(AuthError::Invalid(format!(
            "password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes long"
        )));
    }
    Ok(())
}

pub(crate) async fn hash(password: String) -> Result<String> {
    check_length(&password)?;
    let salt = argon2::password_hash::generate_salt();
    with_turn(move |blocks| hash_in(blocks, password.as_bytes(), &salt)).await?
}

/// Verifies `password` against `stored`, or against a dummy hash when `stored` is
/// `None`, always doing the same work.
pub(crate) async fn verify(password: String, stored: Option<String>) -> Result<bool> {
    with_turn(move |blocks| match stored {
        Some(stored) => verify_in(blocks, password.as_bytes(), &stored),
        None => {
            let dummy = DUMMY_HASH.get_or_init(|| {
                let salt = argon2::password_hash::generate_salt();
                hash_in(blocks, b"minicloud-timing-equaliser", &salt).unwrap_or_default()
            });
            let _ = verify_in(blocks, password.as_bytes(), dummy);
            false
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hash = hash("correct horse battery".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            verify("correct horse battery".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(
            !verify("anything".into(), None).await.unwrap(),
            "unknown users never verify"
        );
    }

    /// Our hashes are standard PHC strings (the crate's own verifier accepts them),
    /// and hashes of other parameters, as older releases or other tools made them,
    /// still verify.
    #[tokio::test]
    async fn hashes_interoperate_with_the_crate_and_other_parameters_verify() {
        let ours = hash("correct horse battery".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            hasher()
                .verify_password(b"correct horse battery", &parsed)
                .is_ok()
        );
        assert!(hasher().verify_password(b"wrong horse", &parsed).is_err());
        use argon2::PasswordHasher as _;
        let light = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 3, 1, None).unwrap(),
        );
        let other = light
            .hash_password(b"an older password")
            .unwrap()
            .to_string();
        assert!(other.contains("m=4096,t=3"), "{other}");
        assert!(
            verify("an older password".into(), Some(other.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("not it at all".into(), Some(other)).await.unwrap());
    }

    /// A block set hashes one password after another without carrying anything over:
    /// each hash in reused memory equals the one in fresh memory.
    #[test]
    fn reused_memory_gives_the_same_hashes_as_fresh_memory() {
        let salt = argon2::password_hash::generate_salt();
        let mut reused = vec![Block::default(); params().block_count()];
        let first = hash_in(&mut reused, b"first password", &salt).unwrap();
        let second = hash_in(&mut reused, b"second password", &salt).unwrap();
        let mut fresh = vec![Block::default(); params().block_count()];
        assert_eq!(
            second,
            hash_in(&mut fresh, b"second password", &salt).unwrap()
        );
        assert_ne!(first, second);
        assert!(verify_in(&mut reused, b"first password", &first));
        assert!(!verify_in(&mut reused, b"second password", &first));
    }

    #[test]
    fn password_length_limits() {
        assert!(check_length("1234567").is_err());
        assert!(check_length("12345678").is_ok());
        assert!(check_length(&"x".repeat(1024)).is_ok());
        assert!(check_length(&"x".repeat(1025)).is_err());
    }
}
