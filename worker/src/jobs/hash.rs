//! `hash`: SHA-256 over `bytes` bytes generated from `seed` (the CPU-bound job). The bytes are
//! the little-endian words of a SplitMix64 sequence started at `seed`, cut to length, so anyone
//! can recompute a result. The work runs on the blocking pool in chunks, with progress between
//! chunks, so it never stalls the worker's other jobs.

use serde::Serialize;
use sha2::{Digest, Sha256};
use shared::job_types::HashInput;

use super::JobFailure;
use crate::context::JobContext;

/// Bytes hashed between two progress reports.
const CHUNK: u64 = 4 << 20;

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
    let mut hasher = Sha256::new();
    let mut generator = SplitMix64::new(input.seed);
    let mut done = 0u64;
    while done < input.bytes {
        let len = CHUNK.min(input.bytes - done);
        // Chunks are a multiple of 8 bytes except the last, so the word stream stays aligned.
        let (h, g) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            generator.fill(&mut buf);
            hasher.update(&buf);
            (hasher, generator)
        })
        .await
        .map_err(|e| JobFailure::permanent(format!("hashing task failed: {e}")))?;
        hasher = h;
        generator = g;
        done += len;
        ctx.progress(
            100.0 * done as f64 / input.bytes as f64,
            format!("hashed {} of {} MiB", done >> 20, input.bytes >> 20),
        )
        .await;
    }
    Ok(HashOutput {
        sha256: hex::encode(hasher.finalize()),
        bytes: input.bytes,
        seed: input.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use shared::{JobId, StatusDocument};

    #[test]
    fn splitmix_known_values() {
        // Reference values of SplitMix64 seeded with 0.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[tokio::test]
    async fn chunking_does_not_change_the_digest() {
        let bytes = CHUNK * 2 + 13;
        let ctx = JobContext::detached(StatusDocument::queued(JobId::new(), "hash", Utc::now()));
        let out = run(HashInput { bytes, seed: 42 }, ctx.clone())
            .await
            .unwrap();
        let mut all = vec![0u8; bytes as usize];
        SplitMix64::new(42).fill(&mut all);
        assert_eq!(out.sha256, hex::encode(Sha256::digest(&all)));
        assert_eq!(ctx.latest_progress().unwrap().percent, 100.0);
        // The empty input hashes to SHA-256 of nothing.
        let ctx = JobContext::detached(StatusDocument::queued(JobId::new(), "hash", Utc::now()));
        let out = run(HashInput { bytes: 0, seed: 1 }, ctx).await.unwrap();
        assert_eq!(
            out.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
