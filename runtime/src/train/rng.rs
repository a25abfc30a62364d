//! The seeded host random number generator of the training engine: takes a `u64` seed, gives
//! uniform floats, bounded integers and normal draws, and a serialisable state for resume.
//!
//! candle's CPU RNG cannot be seeded, so every random choice the trainer makes (source draws,
//! RLW weights, sampling noise) comes from here. ChaCha8 is used explicitly rather than
//! `rand::rngs::StdRng` because StdRng's algorithm may change between rand releases, which would
//! silently change runs; the conversions to floats and integers are written here for the same
//! reason.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A deterministic host RNG (ChaCha8 seeded from a `u64`).
#[derive(Debug, Clone)]
pub struct HostRng {
    seed: u64,
    inner: ChaCha8Rng,
}

/// The resumable state of a [`HostRng`]: the seed and the position in the ChaCha stream.
/// The position is a decimal string because JSON numbers cannot hold a `u128` portably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    pub word_pos: String,
}

impl HostRng {
    pub fn new(seed: u64) -> Self {
        HostRng {
            seed,
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The seed this generator started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// A uniform draw in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `[0, n)`, without modulo bias (rejection sampling). `n = 0` gives 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        // Reject the top partial block of the u64 range so every residue is equally likely.
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// A standard normal draw (Box-Muller, one value per pair of uniforms, so the stream
    /// position alone is the whole state).
    pub fn normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// An index drawn with probability proportional to `weights` (non-negative, finite, not all
    /// zero; the caller validates). Falls back to the last positive weight on rounding.
    pub fn weighted_index(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut target = self.uniform() * total;
        let mut last_positive = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                last_positive = i;
                if target < w {
                    return i;
                }
                target -= w;
            }
        }
        last_positive
    }

    pub fn state(&self) -> RngState {
        RngState {
            seed: self.seed,
            word_pos: self.inner.get_word_pos().to_string(),
        }
    }

    pub fn from_state(state: &RngState) -> Result<Self, String> {
        let pos: u128 = state
            .word_pos
            .parse()
            .map_err(|e| format!("RNG state: bad word_pos `{}`: {e}", state.word_pos))?;
        let mut rng = HostRng::new(state.seed);
        rng.inner.set_word_pos(pos);
        Ok(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_resume_continues_exactly() {
        let mut a = HostRng::new(42);
        let mut b = HostRng::new(42);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let _ = a.normal();
        let state = a.state();
        let json = serde_json::to_string(&state).unwrap();
        let mut resumed = HostRng::from_state(&serde_json::from_str(&json).unwrap()).unwrap();
        for _ in 0..10 {
            assert_eq!(a.next_u64(), resumed.next_u64());
        }
        assert_ne!(HostRng::new(43).next_u64(), HostRng::new(42).next_u64());
    }

    #[test]
    fn draws_have_the_right_ranges_and_moments() {
        let mut rng = HostRng::new(7);
        let n = 20_000;
        let mut counts = [0usize; 3];
        let (mut s, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let u = rng.uniform();
            assert!((0.0..1.0).contains(&u));
            counts[rng.below(3) as usize] += 1;
            let z = rng.normal();
            s += z;
            s2 += z * z;
        }
        for c in counts {
            assert!((c as f64 / n as f64 - 1.0 / 3.0).abs() < 0.02, "{counts:?}");
        }
        let mean = s / n as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((s2 / n as f64 - mean * mean - 1.0).abs() < 0.05);
        let mut hits = [0usize; 3];
        for _ in 0..n {
            hits[rng.weighted_index(&[1.0, 0.0, 3.0])] += 1;
        }
        assert_eq!(hits[1], 0);
        assert!((hits[2] as f64 / n as f64 - 0.75).abs() < 0.02);
        assert!(HostRng::from_state(&RngState {
            seed: 1,
            word_pos: "x".into()
        })
        .is_err());
    }
}
