//! `hash`: SHA-256 over `bytes` bytes generated from `seed` (the CPU-bound job). The bytes are
//! the little-endian words of a SplitMix64 sequence started at `seed`, cut to length, so anyone
//! can recompute a result. The work runs on the blocking pool, reporting progress every chunk,
//! so it never stalls the worker's other jobs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{JobFailure, JobType};
use crate::context::JobContext;

/// Most bytes a `hash` job may generate (1 GiB).
pub const MAX_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashInput {
    /// How many bytes to generate and hash, up to 1 GiB.
    #[schemars(range(max = MAX_BYTES))]
    pub bytes: u64,
    /// Seed of the byte generator (default 0).
    pub seed: Option<u64>,
}

/// `hash`'s declaration.
pub fn job_type() -> JobType {
    JobType::new(
        "hash",
        "SHA-256 of `bytes` bytes generated from `seed` (CPU-bound), with progress.",
        HashInput {
            bytes: 1_000_000,
            seed: Some(1),
        },
        run,
    )
    .max_attempts(3)
    .max_run_seconds(600)
    .priorities(true)
}

/// Bytes hashed between two progress reports (a multiple of [`PIECE`]).
const CHUNK: u64 = 4 << 20;
/// Bytes generated and hashed at a time: small enough to stay in the core's own cache
/// (generating a whole 4 MiB chunk, then hashing it, sent every byte out to memory and back).
/// A multiple of 8, so words stay aligned.
const PIECE: usize = 64 << 10;

#[derive(Debug, Serialize)]
pub struct HashOutput {
    pub sha256: String,
    pub bytes: u64,
    pub seed: u64,
}

/// The SplitMix64 generator (Steele, Lea and Flood, 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf`: whole words, the last one cut short if `buf` is not a multiple of 8.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

pub async fn run(input: HashInput, ctx: JobContext) -> Result<HashOutput, JobFailure> {
    // One trip to the blocking pool for the whole job: a hand-off per chunk left a core idle
    // while the runtime thread woke to start the next one (on a VM, waking an idle CPU is
    // slow). Progress is reported from the blocking thread without waiting for its write, and
    // a cancel is noticed between pieces.
    let total = input.bytes;
    let seed = input.seed.unwrap_or(0);
    let progress = ctx.clone();
    // Canceled with the job, or when this future is dropped (the job timed out or was
    // canceled): the blocking loop stops at its next piece instead of hashing on for nobody.
    let stop = ctx.cancel_token().child_token();
    let _stop_on_drop = stop.clone().drop_guard();
    let digest = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut generator = SplitMix64::new(seed);
        let mut buf = vec![0u8; PIECE.min(total as usize)];
        let mut done = 0u64;
        while done < total {
            // Pieces are a multiple of 8 bytes except the last, so the word stream stays
            // aligned.
            let piece = &mut buf[..PIECE.min((total - done) as usize)];
            generator.fill(piece);
            hasher.update(&*piece);
            done += piece.len() as u64;
            if stop.is_cancelled() {
                return None;
            }
            if done.is_multiple_of(CHUNK) || done == total {
                progress.progress_nowait(
                    100.0 * done as f64 / total as f64,
                    format!("hashed {} of {} MiB", done >> 20, total >> 20),
                );
            }
        }
        Some(hasher.finalize())
    })
    .await
    .map_err(|e| JobFailure::permanent(format!("hashing task failed: {e}")))?;
    let Some(digest) = digest else {
        // Canceled: the worker ends the job as canceled once it sees the token, which is
        // already set; answering anything here could race that and fail the job instead.
        return std::future::pending().await;
    };
    Ok(HashOutput {
        sha256: hex::encode(digest),
        bytes: input.bytes,
        seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use shared::{JobId, StatusDocument};
    use std::time::Duration;

    #[test]
    fn splitmix_known_values() {
        // Reference values of SplitMix64 seeded with 0.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[tokio::test]
    async fn chunking_does_not_change_the_digest() {
        let bytes = CHUNK * 2 + PIECE as u64 * 3 + 13;
        let ctx = JobContext::detached(StatusDocument::queued(JobId::new(), "hash", Utc::now()));
        let out = run(
            HashInput {
                bytes,
                seed: Some(42),
            },
            ctx.clone(),
        )
        .await
        .unwrap();
        let mut all = vec![0u8; bytes as usize];
        SplitMix64::new(42).fill(&mut all);
        assert_eq!(out.sha256, hex::encode(Sha256::digest(&all)));
        assert_eq!(ctx.latest_progress().unwrap().percent, 100.0);
        // The empty input hashes to SHA-256 of nothing.
        let ctx = JobContext::detached(StatusDocument::queued(JobId::new(), "hash", Utc::now()));
        let out = run(
            HashInput {
                bytes: 0,
                seed: Some(1),
            },
            ctx,
        )
        .await
        .unwrap();
        assert_eq!(
            out.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[tokio::test]
    async fn an_abandoned_job_stops_hashing() {
        // What a timeout or a cancel does: the worker drops the handler's future.
        let ctx = JobContext::detached(StatusDocument::queued(JobId::new(), "hash", Utc::now()));
        let input = HashInput {
            bytes: 1 << 40,
            seed: Some(3),
        };
        let timed_out =
            tokio::time::timeout(Duration::from_millis(100), run(input, ctx.clone())).await;
        assert!(timed_out.is_err());
        // The blocking loop notices within a piece; give it a moment, then it must stand still.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stopped_at = ctx.latest_progress().map(|p| p.message);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ctx.latest_progress().map(|p| p.message), stopped_at);
    }
}
