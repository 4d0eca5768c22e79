//! Password hashing with argon2id at OWASP's minimum parameters (m=19 MiB, t=2, p=1),
//! on the blocking pool so a sign-in never stalls the async workers — at most one
//! hash per core at a time ([`HASHING`]): each holds 19 MiB, and unbounded, a burst
//! of sign-ins ran one per blocking thread (up to 512) and grew the process by
//! gigabytes. Waiting for a turn is bounded too ([`QUEUE_DEADLINE`], then 503).

use std::sync::LazyLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

use crate::error::{AuthError, Result};

pub const MIN_PASSWORD_BYTES: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

/// One hash per core at once.
static HASHING: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::sync::Semaphore::new(cores)
});

/// How long a request waits for a hashing turn before it is told to retry (503).
const QUEUE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The 19 MiB each hash allocates comes from `mmap` and goes back to the system
/// when the hash is done. glibc otherwise raises its mmap threshold after the first
/// such block is freed, and every later one stays in whichever thread's arena
/// hashed it (the ~19 MiB steps the issue measured).
fn return_hash_memory_to_the_system() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt only changes the allocator's tuning; 16 MiB < 19 MiB.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 16 * 1024 * 1024);
        }
    });
}

/// Runs `work` on the blocking pool once a hashing turn is free.
async fn with_turn<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    return_hash_memory_to_the_system();
    let _turn = tokio::time::timeout(QUEUE_DEADLINE, HASHING.acquire())
        .await
        .map_err(|_| AuthError::Busy)?
        .map_err(|e| AuthError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))
}

pub fn hasher() -> Argon2<'static> {
    #[allow(clippy::expect_used)]
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A hash of a password nobody has, verified against when the email is unknown so
/// that "no such user" and "wrong password" take the same time.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    hasher()
        .hash_password(b"minicloud-timing-equaliser")
        .map(|hash| hash.to_string())
        .unwrap_or_default()
});

pub fn check_length(password: &str) -> Result<()> {
    let len = password.len();
    if !(MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&len) {
        return Err(AuthError::Invalid(format!(
            "password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes long"
        )));
    }
    Ok(())
}

pub async fn hash(password: String) -> Result<String> {
    check_length(&password)?;
    with_turn(move || {
        hasher()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| AuthError::Internal(format!("hashing a password: {e}")))
    })
    .await?
}

/// Verifies `password` against `stored`, or against a dummy hash when `stored` is
/// `None`, always doing the same work.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool> {
    with_turn(move || {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| DUMMY_HASH.clone());
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return false;
        };
        let ok = hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
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

    #[test]
    fn password_length_limits() {
        assert!(check_length("1234567").is_err());
        assert!(check_length("12345678").is_ok());
        assert!(check_length(&"x".repeat(1024)).is_ok());
        assert!(check_length(&"x".repeat(1025)).is_err());
    }
}
