//! Source mixing: takes the sources (name, size, role) and a mixing policy; gives, each step,
//! the sources that step draws, and a serialisable cursor so a resumed run draws the same
//! sequence.
//!
//! One source per step, as the RECAP reference code does: `round_robin`, `uniform` (seeded),
//! `proportional` (to source size, the paper's PropMix), `weights(...)`, and `coreset(cap)`:
//! proportional mixing in which the replay sources together count for at most `cap` times the
//! reasoning (RL) sources' size, so replay volume is at most `cap` times reasoning volume in
//! expectation (the paper's Coreset baseline, "replay capped at half the reasoning volume", is
//! `coreset(0.5)`); [`Mixer::coreset_budget`] gives the matching number of replay examples to
//! keep. `all` draws every source every step (the paper's written formulation, a weighted sum
//! of losses).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rng::{HostRng, RngState};

/// Whether a source feeds an RL objective or is replayed with SFT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRole {
    Rl,
    Replay,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub name: String,
    /// Number of examples (rows) in the source.
    pub size: usize,
    pub role: SourceRole,
}

/// A mixing policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MixConfig {
    RoundRobin,
    Uniform,
    Proportional,
    /// Relative draw weights by source name; every source must be named.
    Weights {
        weights: BTreeMap<String, f64>,
    },
    Coreset {
        cap: f64,
    },
    All,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("mix: {0}")]
pub struct MixError(pub String);

/// The resumable position of a [`Mixer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixCursor {
    pub step: u64,
    /// How often each source has been drawn.
    pub draws: Vec<u64>,
    pub rng: RngState,
}

/// Draws sources step by step under a [`MixConfig`].
#[derive(Debug, Clone)]
pub struct Mixer {
    config: MixConfig,
    sources: Vec<SourceInfo>,
    /// Draw probabilities of the one-source policies that sample (empty otherwise).
    probs: Vec<f64>,
    rng: HostRng,
    step: u64,
    draws: Vec<u64>,
}

impl Mixer {
    pub fn new(config: MixConfig, sources: Vec<SourceInfo>, seed: u64) -> Result<Self, MixError> {
        let fail = |m: String| Err(MixError(m));
        if sources.is_empty() {
            return fail("needs at least one source".into());
        }
        if let Some(s) = sources.iter().find(|s| s.size == 0) {
            return fail(format!("source `{}` is empty", s.name));
        }
        for (i, s) in sources.iter().enumerate() {
            if sources[..i].iter().any(|o| o.name == s.name) {
                return fail(format!("source `{}` appears twice", s.name));
            }
        }
        let sizes: Vec<f64> = sources.iter().map(|s| s.size as f64).collect();
        let weights = match &config {
            MixConfig::RoundRobin | MixConfig::All => Vec::new(),
            MixConfig::Uniform => vec![1.0; sources.len()],
            MixConfig::Proportional => sizes,
            MixConfig::Weights { weights } => {
                if let Some(name) = weights
                    .keys()
                    .find(|n| !sources.iter().any(|s| &s.name == *n))
                {
                    return fail(format!("weights: unknown source `{name}`"));
                }
                let mut w = Vec::with_capacity(sources.len());
                for s in &sources {
                    match weights.get(&s.name) {
                        Some(v) if v.is_finite() && *v >= 0.0 => w.push(*v),
                        Some(v) => {
                            return fail(format!("weights: `{}` has weight {v}, need >= 0", s.name))
                        }
                        None => return fail(format!("weights: no weight for source `{}`", s.name)),
                    }
                }
                w
            }
            MixConfig::Coreset { cap } => {
                if !(cap.is_finite() && *cap >= 0.0) {
                    return fail(format!("coreset: cap must be >= 0, got {cap}"));
                }
                let rl: f64 = sources
                    .iter()
                    .filter(|s| s.role == SourceRole::Rl)
                    .map(|s| s.size as f64)
                    .sum();
                if rl == 0.0 {
                    return fail(
                        "coreset: needs at least one RL source to cap replay against".into(),
                    );
                }
                let replay: f64 = sources
                    .iter()
                    .filter(|s| s.role == SourceRole::Replay)
                    .map(|s| s.size as f64)
                    .sum();
                let scale = if replay > cap * rl {
                    cap * rl / replay
                } else {
                    1.0
                };
                sources
                    .iter()
                    .map(|s| match s.role {
                        SourceRole::Rl => s.size as f64,
                        SourceRole::Replay => s.size as f64 * scale,
                    })
                    .collect()
            }
        };
        let total: f64 = weights.iter().sum();
        if !weights.is_empty() && total <= 0.0 {
            return fail("every source has weight 0".into());
        }
        let probs = weights.iter().map(|w| w / total).collect();
        Ok(Mixer {
            draws: vec![0; sources.len()],
            config,
            sources,
            probs,
            rng: HostRng::new(seed),
            step: 0,
        })
    }

    pub fn sources(&self) -> &[SourceInfo] {
        &self.sources
    }

    /// The chance each source is drawn on a step (1 each under `all`, 1/n under `round_robin`
    /// averaged over a cycle).
    pub fn probabilities(&self) -> Vec<f64> {
        match self.config {
            MixConfig::All => vec![1.0; self.sources.len()],
            MixConfig::RoundRobin => vec![1.0 / self.sources.len() as f64; self.sources.len()],
            _ => self.probs.clone(),
        }
    }

    /// Under `coreset`, how many examples of each replay source the coreset keeps (the replay
    /// sources' sizes scaled so together they are `cap` times the RL size); `None` for RL
    /// sources and under other policies.
    pub fn coreset_budget(&self) -> Vec<Option<usize>> {
        let MixConfig::Coreset { cap } = self.config else {
            return vec![None; self.sources.len()];
        };
        let rl: f64 = self
            .sources
            .iter()
            .filter(|s| s.role == SourceRole::Rl)
            .map(|s| s.size as f64)
            .sum();
        let replay: f64 = self
            .sources
            .iter()
            .filter(|s| s.role == SourceRole::Replay)
            .map(|s| s.size as f64)
            .sum();
        let scale = if replay > cap * rl {
            cap * rl / replay
        } else {
            1.0
        };
        self.sources
            .iter()
            .map(|s| {
                (s.role == SourceRole::Replay).then(|| (s.size as f64 * scale).floor() as usize)
            })
            .collect()
    }

    /// The sources (indices into [`Mixer::sources`]) the next step draws.
    pub fn next_draw(&mut self) -> Vec<usize> {
        let drawn = match self.config {
            MixConfig::All => (0..self.sources.len()).collect(),
            MixConfig::RoundRobin => vec![(self.step % self.sources.len() as u64) as usize],
            _ => vec![self.rng.weighted_index(&self.probs)],
        };
        for &i in &drawn {
            self.draws[i] += 1;
        }
        self.step += 1;
        drawn
    }

    /// How often each source has been drawn so far.
    pub fn draws(&self) -> &[u64] {
        &self.draws
    }

    pub fn cursor(&self) -> MixCursor {
        MixCursor {
            step: self.step,
            draws: self.draws.clone(),
            rng: self.rng.state(),
        }
    }

    /// Continues from a cursor saved under the same sources and policy.
    pub fn restore(&mut self, cursor: MixCursor) -> Result<(), MixError> {
        if cursor.draws.len() != self.sources.len() {
            return Err(MixError(format!(
                "checkpoint cursor has {} sources, this run has {}",
                cursor.draws.len(),
                self.sources.len()
            )));
        }
        self.rng = HostRng::from_state(&cursor.rng).map_err(MixError)?;
        self.step = cursor.step;
        self.draws = cursor.draws;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<SourceInfo> {
        vec![
            SourceInfo {
                name: "math".into(),
                size: 100,
                role: SourceRole::Rl,
            },
            SourceInfo {
                name: "ground".into(),
                size: 300,
                role: SourceRole::Rl,
            },
            SourceInfo {
                name: "ocr".into(),
                size: 1600,
                role: SourceRole::Replay,
            },
        ]
    }

    fn frequencies(m: &mut Mixer, n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; m.sources().len()];
        for _ in 0..n {
            let d = m.next_draw();
            assert_eq!(d.len(), 1);
            counts[d[0]] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    fn near(got: &[f64], want: &[f64]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 0.015, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn round_robin_and_all() {
        let mut rr = Mixer::new(MixConfig::RoundRobin, sources(), 0).unwrap();
        let seq: Vec<Vec<usize>> = (0..5).map(|_| rr.next_draw()).collect();
        assert_eq!(seq, vec![vec![0], vec![1], vec![2], vec![0], vec![1]]);
        assert_eq!(rr.draws(), &[2, 2, 1]);
        let mut all = Mixer::new(MixConfig::All, sources(), 0).unwrap();
        assert_eq!(all.next_draw(), vec![0, 1, 2]);
        assert_eq!(all.probabilities(), vec![1.0; 3]);
    }

    #[test]
    fn sampling_policies_match_their_probabilities() {
        let n = 20_000;
        let mut u = Mixer::new(MixConfig::Uniform, sources(), 42).unwrap();
        near(&frequencies(&mut u, n), &[1.0 / 3.0; 3]);
        let mut p = Mixer::new(MixConfig::Proportional, sources(), 42).unwrap();
        assert_eq!(p.probabilities(), vec![0.05, 0.15, 0.8]);
        near(&frequencies(&mut p, n), &[0.05, 0.15, 0.8]);
        let weights = BTreeMap::from([
            ("math".into(), 3.0),
            ("ground".into(), 1.0),
            ("ocr".into(), 0.0),
        ]);
        let mut w = Mixer::new(MixConfig::Weights { weights }, sources(), 42).unwrap();
        near(&frequencies(&mut w, n), &[0.75, 0.25, 0.0]);
        assert_eq!(w.draws()[2], 0);
    }

    #[test]
    fn coreset_caps_replay_volume() {
        // RL size 400; replay 1600 is capped to 0.5 * 400 = 200: replay chance 200 / 600.
        let mut c = Mixer::new(MixConfig::Coreset { cap: 0.5 }, sources(), 3).unwrap();
        near(
            &c.probabilities(),
            &[100.0 / 600.0, 300.0 / 600.0, 200.0 / 600.0],
        );
        assert_eq!(c.coreset_budget(), vec![None, None, Some(200)]);
        frequencies(&mut c, 30_000);
        let d = c.draws();
        let ratio = d[2] as f64 / (d[0] + d[1]) as f64;
        assert!((ratio - 0.5).abs() < 0.03, "replay / reasoning = {ratio}");
        // A replay source already under the cap is mixed proportionally.
        let mut small = sources();
        small[2].size = 100;
        let s = Mixer::new(MixConfig::Coreset { cap: 0.5 }, small, 3).unwrap();
        near(&s.probabilities(), &[0.2, 0.6, 0.2]);
        assert_eq!(s.coreset_budget()[2], Some(100));
        let mut zero = Mixer::new(MixConfig::Coreset { cap: 0.0 }, sources(), 3).unwrap();
        frequencies(&mut zero, 1000);
        assert_eq!(zero.draws()[2], 0);
        let only_replay = vec![sources()[2].clone()];
        assert!(Mixer::new(MixConfig::Coreset { cap: 0.5 }, only_replay, 0).is_err());
    }

    #[test]
    fn bad_configs_are_errors() {
        let partial = BTreeMap::from([("math".into(), 1.0)]);
        let e = Mixer::new(MixConfig::Weights { weights: partial }, sources(), 0).unwrap_err();
        assert!(e.to_string().contains("`ground`"), "{e}");
        let unknown = BTreeMap::from([("maths".into(), 1.0)]);
        assert!(Mixer::new(MixConfig::Weights { weights: unknown }, sources(), 0).is_err());
        let neg = BTreeMap::from([
            ("math".into(), -1.0),
            ("ground".into(), 1.0),
            ("ocr".into(), 1.0),
        ]);
        assert!(Mixer::new(MixConfig::Weights { weights: neg }, sources(), 0).is_err());
        let zeros = BTreeMap::from([
            ("math".into(), 0.0),
            ("ground".into(), 0.0),
            ("ocr".into(), 0.0),
        ]);
        assert!(Mixer::new(MixConfig::Weights { weights: zeros }, sources(), 0).is_err());
        let mut empty = sources();
        empty[0].size = 0;
        assert!(Mixer::new(MixConfig::Uniform, empty, 0).is_err());
        assert!(Mixer::new(MixConfig::Uniform, vec![], 0).is_err());
        assert!(Mixer::new(MixConfig::Coreset { cap: f64::NAN }, sources(), 0).is_err());
    }

    #[test]
    fn seeded_and_resumable() {
        let draw = |seed, n| {
            let mut m = Mixer::new(MixConfig::Uniform, sources(), seed).unwrap();
            (0..n).map(|_| m.next_draw()[0]).collect::<Vec<_>>()
        };
        assert_eq!(draw(42, 50), draw(42, 50));
        assert_ne!(draw(42, 50), draw(43, 50));
        for config in [
            MixConfig::Uniform,
            MixConfig::RoundRobin,
            MixConfig::Proportional,
        ] {
            let mut a = Mixer::new(config.clone(), sources(), 9).unwrap();
            for _ in 0..7 {
                a.next_draw();
            }
            let json = serde_json::to_string(&a.cursor()).unwrap();
            let mut b = Mixer::new(config, sources(), 9).unwrap();
            b.restore(serde_json::from_str(&json).unwrap()).unwrap();
            for _ in 0..20 {
                assert_eq!(a.next_draw(), b.next_draw());
            }
            assert_eq!(a.cursor(), b.cursor());
        }
        let mut two = Mixer::new(MixConfig::Uniform, sources()[..2].to_vec(), 9).unwrap();
        let three = Mixer::new(MixConfig::Uniform, sources(), 9).unwrap();
        assert!(two.restore(three.cursor()).is_err());
        let cfg: MixConfig = serde_json::from_str(r#"{"kind": "coreset", "cap": 0.5}"#).unwrap();
        assert_eq!(cfg, MixConfig::Coreset { cap: 0.5 });
    }
}
