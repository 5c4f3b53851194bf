//! Admin password hashing: argon2id (m = 19 MiB, t = 2, p = 1), at most a few hashes at once,
//! each computed in a block buffer that is allocated once and reused. Peak memory is therefore
//! permits × 19 MiB, and it stays that: nothing of 19 MiB is freed and re-allocated per login
//! (glibc keeps such freed buffers in per-thread arenas, so unbounded hashing grew a relay to GBs).

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use aws_lc_rs::constant_time;
use tokio::sync::Semaphore;

use crate::Error;

/// argon2id memory cost in KiB (the OWASP minimum), also the largest a stored hash may ask for.
pub const M_COST_KIB: u32 = 19 * 1024;
/// argon2id passes.
const T_COST: u32 = 2;
/// argon2id lanes.
const P_COST: u32 = 1;
/// Most passes a stored hash may ask for (CPU bound, not memory).
const MAX_T_COST: u32 = 10;
/// Most lanes a stored hash may ask for (the memory stays `M_COST_KIB` whatever the lanes).
const MAX_P_COST: u32 = 4;
/// Hash output length of new hashes.
const OUTPUT_LEN: usize = 32;
/// Salt length of new hashes.
const SALT_LEN: usize = 16;
/// Most hashes at once, whatever the CPU count: each holds a 19 MiB buffer.
const MAX_PERMITS: usize = 4;
/// How long a hash may wait for a free slot before [`Error::HashingBusy`]: logins arrive in
/// bursts of a few, so a short queue absorbs them; a flood is told to come back.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// A stored hash that no password matches, checked when the user does not exist (or its hash
/// is unusable) so that the answer takes as long as for a real user.
pub(crate) const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Vg0x6hYzZzR0w3Z7u7K6m8sQmXo7cXl4yQ3Xb3mJxkE";

/// How many argon2 computations may run at once in this process: the CPU count, at least 1,
/// at most 4. Peak hashing memory is this × 19 MiB.
pub fn password_hash_permits() -> usize {
    POOL.permits
}

/// The process-wide pool: every `Store` of the process shares it, so the bound is per process.
static POOL: LazyLock<HashPool> = LazyLock::new(|| {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    HashPool::new(cpus.clamp(1, MAX_PERMITS), QUEUE_WAIT)
});

/// A new argon2id PHC string for `password`.
pub(crate) async fn hash(password: &str) -> Result<String, Error> {
    POOL.hash(password).await
}

/// Whether `password` matches the PHC string `phc`. An unparsable hash, or one whose parameters
/// exceed the bound, is logged and matches nothing (after the same work as a real check).
pub(crate) async fn verify(password: &str, phc: &str) -> Result<bool, Error> {
    POOL.verify(password, phc).await
}

/// A semaphore of `permits` slots and at most `permits` block buffers, reused.
#[derive(Debug)]
pub(crate) struct HashPool {
    permits: usize,
    slots: Arc<Semaphore>,
    /// Buffers not in use. Taken and returned only while holding a slot, so never more than
    /// `permits` exist; each is allocated on first need and then kept for the process's life.
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
    wait: Duration,
}

/// What a check computes: parameters, salt and the expected output, from a PHC string.
struct Parsed {
    params: Params,
    salt: Vec<u8>,
    expected: Vec<u8>,
}

impl HashPool {
    pub(crate) fn new(permits: usize, wait: Duration) -> HashPool {
        HashPool {
            permits,
            slots: Arc::new(Semaphore::new(permits)),
            buffers: Arc::new(Mutex::new(Vec::with_capacity(permits))),
            wait,
        }
    }

    pub(crate) async fn hash(&self, password: &str) -> Result<String, Error> {
        let mut salt = [0u8; SALT_LEN];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| Error::PasswordHash)?;
        let params = Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN))
            .map_err(|_| Error::PasswordHash)?;
        let out = self
            .compute(
                params.clone(),
                password.as_bytes().to_vec(),
                salt.to_vec(),
                OUTPUT_LEN,
            )
            .await??;
        let salt = SaltString::encode_b64(&salt).map_err(|_| Error::PasswordHash)?;
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|_| Error::PasswordHash)?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|_| Error::PasswordHash)?),
        };
        Ok(phc.to_string())
    }

    pub(crate) async fn verify(&self, password: &str, phc: &str) -> Result<bool, Error> {
        let (parsed, usable) = match parse(phc) {
            Ok(p) => (p, true),
            Err(why) => {
                tracing::warn!(
                    why,
                    "stored password hash refused; checking a dummy instead"
                );
                (parse(DUMMY_HASH).map_err(|_| Error::PasswordHash)?, false)
            }
        };
        let len = parsed.expected.len();
        let out = self
            .compute(
                parsed.params,
                password.as_bytes().to_vec(),
                parsed.salt,
                len,
            )
            .await??;
        let same = constant_time::verify_slices_are_equal(&out, &parsed.expected).is_ok();
        Ok(usable && same)
    }

    /// Runs one argon2id computation on a blocking thread, in a pooled buffer, once a slot is
    /// free (waiting at most `self.wait`). Cancel safe: the slot and the buffer travel with the
    /// blocking task, so a dropped caller still releases both when the computation ends.
    async fn compute(
        &self,
        params: Params,
        password: Vec<u8>,
        salt: Vec<u8>,
        out_len: usize,
    ) -> Result<Result<Vec<u8>, Error>, Error> {
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Error::HashingBusy)?
            .map_err(|_| Error::PasswordHash)?;
        let buffers = self.buffers.clone();
        tokio::task::spawn_blocking(move || {
            let mut buffer = buffers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_else(|| vec![Block::new(); M_COST_KIB as usize]);
            let mut out = vec![0u8; out_len];
            let result = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_into_with_memory(&password, &salt, &mut out, &mut buffer[..])
                .map(|()| out)
                .map_err(|_| Error::PasswordHash);
            buffers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(buffer);
            drop(permit);
            result
        })
        .await
        .map_err(|_| Error::PasswordHash)
    }

    #[cfg(test)]
    fn buffers(&self) -> usize {
        self.buffers.lock().unwrap().len()
    }
}

/// Parses an argon2id PHC string and checks its parameters against the bound, without
/// allocating anything of its memory cost.
fn parse(phc: &str) -> Result<Parsed, &'static str> {
    let hash = PasswordHash::new(phc).map_err(|_| "not a PHC string")?;
    if hash.algorithm != argon2::ARGON2ID_IDENT {
        return Err("not argon2id");
    }
    if hash.version.is_some_and(|v| v != u32::from(Version::V0x13)) {
        return Err("not argon2 version 19");
    }
    let params = Params::try_from(&hash).map_err(|_| "invalid argon2 parameters")?;
    if params.m_cost() > M_COST_KIB || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return Err("argon2 parameters above the bound (m ≤ 19456 KiB, t ≤ 10, p ≤ 4)");
    }
    if params.block_count() > M_COST_KIB as usize {
        return Err("argon2 memory above the bound");
    }
    let mut salt = [0u8; 64];
    let salt = hash
        .salt
        .ok_or("no salt")?
        .decode_b64(&mut salt)
        .map_err(|_| "invalid salt")?
        .to_vec();
    let expected = hash.hash.ok_or("no hash")?.as_bytes().to_vec();
    Ok(Parsed {
        params,
        salt,
        expected,
    })
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use super::*;

    fn reference() -> Argon2<'static> {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap(),
        )
    }

    #[tokio::test]
    async fn new_hashes_verify_here_and_with_the_reference_implementation() {
        let pool = HashPool::new(1, QUEUE_WAIT);
        let phc = pool.hash("correct horse").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(pool.verify("correct horse", &phc).await.unwrap());
        assert!(!pool.verify("correct horsf", &phc).await.unwrap());
        let h = PasswordHash::new(&phc).unwrap();
        assert!(reference().verify_password(b"correct horse", &h).is_ok());
    }

    #[tokio::test]
    async fn hashes_made_by_the_reference_implementation_verify() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = reference()
            .hash_password(b"battery staple", &salt)
            .unwrap()
            .to_string();
        let pool = HashPool::new(1, QUEUE_WAIT);
        assert!(pool.verify("battery staple", &phc).await.unwrap());
        assert!(!pool.verify("battery", &phc).await.unwrap());
        assert!(!pool.verify("", DUMMY_HASH).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_above_the_bound_or_malformed_match_nothing() {
        // A correct hash with m = 64 MiB: refused before anything of that size is allocated.
        let big = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let small = big.hash_password(b"pw", &salt).unwrap().to_string();
        let pool = HashPool::new(1, QUEUE_WAIT);
        assert!(pool.verify("pw", &small).await.unwrap(), "small m is fine");
        let huge = small.replace("m=8,", "m=65536,");
        assert!(parse(&huge).is_err());
        assert!(!pool.verify("pw", &huge).await.unwrap());
        for bad in [
            "",
            "plain",
            &small.replace("argon2id", "argon2i"),
            &small.replace("t=1", "t=11"),
            &small.replace("p=1", "p=5"),
        ] {
            assert!(parse(bad).is_err(), "{bad}");
            assert!(!pool.verify("pw", bad).await.unwrap(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_full_pool_answers_busy_and_buffers_stay_bounded() {
        let pool = Arc::new(HashPool::new(2, Duration::from_millis(50)));
        // Slots held elsewhere: a check waits, then is told to come back.
        let held = pool.slots.clone().acquire_many_owned(2).await.unwrap();
        assert!(matches!(
            pool.verify("pw", DUMMY_HASH).await,
            Err(Error::HashingBusy)
        ));
        drop(held);
        // Eight at once with a patient pool: all done, at most two buffers ever made.
        let pool = Arc::new(HashPool::new(2, Duration::from_secs(60)));
        let checks: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.verify("pw", DUMMY_HASH).await })
            })
            .collect();
        for c in checks {
            assert!(!c.await.unwrap().unwrap());
        }
        assert!((1..=2).contains(&pool.buffers()), "{}", pool.buffers());
    }

    #[test]
    fn the_dummy_hash_is_within_the_bound() {
        let p = parse(DUMMY_HASH).unwrap();
        assert_eq!(p.params.m_cost(), M_COST_KIB);
        assert_eq!(p.expected.len(), OUTPUT_LEN);
    }
}
