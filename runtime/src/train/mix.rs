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
//! of losses). [`RowSampler`] then picks the rows of a drawn source: seeded shuffled epochs,
//! limited to the coreset subset under a budget, with a two-number cursor.

use recap_plan::Mix;
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

/// The factor that shrinks the replay sources so together they are at most `cap` times the RL
/// sources' size (1 when they already are).
fn coreset_scale(sources: &[SourceInfo], cap: f64) -> f64 {
    let total = |role| -> f64 {
        sources
            .iter()
            .filter(|s| s.role == role)
            .map(|s| s.size as f64)
            .sum()
    };
    let (rl, replay) = (total(SourceRole::Rl), total(SourceRole::Replay));
    if replay > cap * rl {
        cap * rl / replay
    } else {
        1.0
    }
}

/// The seed the draws use: the one `uniform(seed)` names (also as a coreset's base), else the
/// stage's.
fn draw_seed(mix: &Mix, stage_seed: u64) -> u64 {
    match mix {
        Mix::Uniform { seed } => *seed,
        Mix::Coreset { base, .. } => draw_seed(base, stage_seed),
        _ => stage_seed,
    }
}

/// Relative draw weights of the sampling policies (uniform, proportional, weights).
fn sampling_weights(config: &Mix, sources: &[SourceInfo]) -> Result<Vec<f64>, MixError> {
    let fail = |m: String| Err(MixError(m));
    Ok(match config {
        Mix::Uniform { .. } => vec![1.0; sources.len()],
        Mix::Proportional => sources.iter().map(|s| s.size as f64).collect(),
        Mix::Weights { weights } => {
            if let Some(name) = weights
                .keys()
                .find(|n| !sources.iter().any(|s| s.name == **n))
            {
                return fail(format!("weights: unknown source `{name}`"));
            }
            let mut w = Vec::with_capacity(sources.len());
            for s in sources {
                match weights.get(s.name.as_str()) {
                    Some(v) if v.is_finite() && *v >= 0.0 => w.push(*v),
                    Some(v) => {
                        return fail(format!("weights: `{}` has weight {v}, need >= 0", s.name))
                    }
                    // The language documents that sources a `weights(...)` does not name weigh 1.
                    None => w.push(1.0),
                }
            }
            w
        }
        Mix::RoundRobin | Mix::All | Mix::Coreset { .. } => Vec::new(),
    })
}

/// Scales the replay sources' weights down so their total is at most `cap` times the RL
/// sources' total: the draw-volume side of the coreset.
fn cap_replay(sources: &[SourceInfo], mut weights: Vec<f64>, cap: f64) -> Vec<f64> {
    let total = |role| -> f64 {
        sources
            .iter()
            .zip(&weights)
            .filter(|(s, _)| s.role == role)
            .map(|(_, w)| w)
            .sum()
    };
    let (rl, replay) = (total(SourceRole::Rl), total(SourceRole::Replay));
    if replay > cap * rl {
        let f = cap * rl / replay;
        for (s, w) in sources.iter().zip(weights.iter_mut()) {
            if s.role == SourceRole::Replay {
                *w *= f;
            }
        }
    }
    weights
}

/// Draws sources step by step under a plan's [`Mix`].
#[derive(Debug, Clone)]
pub struct Mixer {
    config: Mix,
    sources: Vec<SourceInfo>,
    /// Draw probabilities of the one-source policies that sample (empty otherwise).
    probs: Vec<f64>,
    rng: HostRng,
    step: u64,
    draws: Vec<u64>,
}

impl Mixer {
    /// A mixer of `sources` under `config`, drawing with the seed `config` names (`uniform(seed)`)
    /// or else `stage_seed`.
    pub fn new(config: &Mix, sources: Vec<SourceInfo>, stage_seed: u64) -> Result<Self, MixError> {
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
        let weights = match config {
            Mix::RoundRobin | Mix::All => Vec::new(),
            Mix::Coreset { cap, base } => {
                if !(cap.is_finite() && *cap >= 0.0) {
                    return fail(format!("coreset: cap must be >= 0, got {cap}"));
                }
                if !sources.iter().any(|s| s.role == SourceRole::Rl) {
                    return fail(
                        "coreset: needs at least one RL source to cap replay against".into(),
                    );
                }
                if matches!(**base, Mix::RoundRobin | Mix::All | Mix::Coreset { .. }) {
                    return fail(
                        "coreset: base must be uniform, proportional or weights(...), which draw \
                         sources at random; the cap scales the replay sources' chances"
                            .into(),
                    );
                }
                cap_replay(&sources, sampling_weights(base, &sources)?, *cap)
            }
            other => sampling_weights(other, &sources)?,
        };
        let total: f64 = weights.iter().sum();
        if !weights.is_empty() && total <= 0.0 {
            return fail("every source has weight 0".into());
        }
        let probs = weights.iter().map(|w| w / total).collect();
        Ok(Mixer {
            draws: vec![0; sources.len()],
            config: config.clone(),
            sources,
            probs,
            rng: HostRng::new(draw_seed(config, stage_seed)),
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
            Mix::All => vec![1.0; self.sources.len()],
            Mix::RoundRobin => vec![1.0 / self.sources.len() as f64; self.sources.len()],
            _ => self.probs.clone(),
        }
    }

    /// Under `coreset`, how many examples of each replay source the coreset keeps (the replay
    /// sources' sizes scaled so together they are `cap` times the RL size); `None` for RL
    /// sources and under other policies.
    pub fn coreset_budget(&self) -> Vec<Option<usize>> {
        let Mix::Coreset { cap, .. } = &self.config else {
            return vec![None; self.sources.len()];
        };
        let scale = coreset_scale(&self.sources, *cap);
        self.sources
            .iter()
            .map(|s| {
                // At least one row, so a capped replay source can still be drawn.
                (s.role == SourceRole::Replay)
                    .then(|| ((s.size as f64 * scale).floor() as usize).clamp(1, s.size.max(1)))
            })
            .collect()
    }

    /// The sources (indices into [`Mixer::sources`]) the next step draws.
    pub fn next_draw(&mut self) -> Vec<usize> {
        let drawn = match self.config {
            Mix::All => (0..self.sources.len()).collect(),
            Mix::RoundRobin => vec![(self.step % self.sources.len() as u64) as usize],
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

/// A seed for a sub-stream (an epoch, a subset) derived from a run seed with SplitMix64's
/// finaliser, so sub-streams are independent and reproducible without extra state.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded permutation of `0..n` (Fisher-Yates).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = HostRng::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// The coreset of a source of `size` rows under `budget`: a fixed subset of `budget` rows
/// drawn with `seed` (all rows when the budget is not smaller), in ascending order.
pub fn coreset_rows(size: usize, budget: usize, seed: u64) -> Vec<usize> {
    if budget >= size {
        return (0..size).collect();
    }
    let mut subset = permutation(size, derive_seed(seed, SUBSET_STREAM));
    subset.truncate(budget);
    subset.sort_unstable();
    subset
}

/// The resumable position of a [`RowSampler`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCursor {
    pub epoch: u64,
    /// Rows of the current epoch already handed out.
    pub pos: usize,
}

/// Which rows of one source the batches use: every row once per epoch in a seeded shuffled
/// order, a new order each epoch. With a budget (the coreset), only a fixed seeded subset of
/// `budget` rows is ever used. The epoch's order is derived from (seed, epoch), so the cursor is
/// just (epoch, position).
#[derive(Debug, Clone)]
pub struct RowSampler {
    seed: u64,
    /// The rows in use (all rows, or the coreset subset), in ascending order.
    rows: Vec<usize>,
    epoch: u64,
    pos: usize,
    order: Vec<usize>,
}

/// The stream id of the coreset subset, apart from every epoch's stream.
const SUBSET_STREAM: u64 = u64::MAX;

impl RowSampler {
    pub fn new(size: usize, budget: Option<usize>, seed: u64) -> Result<Self, MixError> {
        if size == 0 {
            return Err(MixError("row sampler: the source is empty".into()));
        }
        let rows = match budget {
            Some(0) => return Err(MixError("row sampler: a budget of 0 rows".into())),
            Some(b) => coreset_rows(size, b, seed),
            None => (0..size).collect(),
        };
        let mut sampler = RowSampler {
            seed,
            rows,
            epoch: 0,
            pos: 0,
            order: Vec::new(),
        };
        sampler.shuffle();
        Ok(sampler)
    }

    fn shuffle(&mut self) {
        let perm = permutation(self.rows.len(), derive_seed(self.seed, self.epoch));
        self.order = perm.into_iter().map(|i| self.rows[i]).collect();
    }

    /// Rows in use per epoch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The next `n` row indices, continuing into new epochs as needed.
    pub fn next_rows(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pos == self.order.len() {
                self.epoch += 1;
                self.pos = 0;
                self.shuffle();
            }
            let take = (n - out.len()).min(self.order.len() - self.pos);
            out.extend_from_slice(&self.order[self.pos..self.pos + take]);
            self.pos += take;
        }
        out
    }

    pub fn cursor(&self) -> RowCursor {
        RowCursor {
            epoch: self.epoch,
            pos: self.pos,
        }
    }

    pub fn restore(&mut self, cursor: RowCursor) -> Result<(), MixError> {
        if cursor.pos > self.rows.len() {
            return Err(MixError(format!(
                "row cursor at {} of an epoch of {} rows",
                cursor.pos,
                self.rows.len()
            )));
        }
        self.epoch = cursor.epoch;
        self.pos = cursor.pos;
        self.shuffle();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn proportional() -> Box<Mix> {
        Box::new(Mix::Proportional)
    }

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
        let mut rr = Mixer::new(&Mix::RoundRobin, sources(), 0).unwrap();
        let seq: Vec<Vec<usize>> = (0..5).map(|_| rr.next_draw()).collect();
        assert_eq!(seq, vec![vec![0], vec![1], vec![2], vec![0], vec![1]]);
        assert_eq!(rr.draws(), &[2, 2, 1]);
        let mut all = Mixer::new(&Mix::All, sources(), 0).unwrap();
        assert_eq!(all.next_draw(), vec![0, 1, 2]);
        assert_eq!(all.probabilities(), vec![1.0; 3]);
    }

    #[test]
    fn sampling_policies_match_their_probabilities() {
        let n = 20_000;
        let mut u = Mixer::new(&Mix::Uniform { seed: 42 }, sources(), 0).unwrap();
        near(&frequencies(&mut u, n), &[1.0 / 3.0; 3]);
        let mut p = Mixer::new(&Mix::Proportional, sources(), 42).unwrap();
        assert_eq!(p.probabilities(), vec![0.05, 0.15, 0.8]);
        near(&frequencies(&mut p, n), &[0.05, 0.15, 0.8]);
        let weights = BTreeMap::from([
            ("math".into(), 3.0),
            ("ground".into(), 1.0),
            ("ocr".into(), 0.0),
        ]);
        let mut w = Mixer::new(&Mix::Weights { weights }, sources(), 42).unwrap();
        near(&frequencies(&mut w, n), &[0.75, 0.25, 0.0]);
        assert_eq!(w.draws()[2], 0);
    }

    #[test]
    fn coreset_caps_replay_volume() {
        // RL size 400; replay 1600 is capped to 0.5 * 400 = 200: replay chance 200 / 600.
        let mut c = Mixer::new(
            &Mix::Coreset {
                cap: 0.5,
                base: proportional(),
            },
            sources(),
            3,
        )
        .unwrap();
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
        let s = Mixer::new(
            &Mix::Coreset {
                cap: 0.5,
                base: proportional(),
            },
            small,
            3,
        )
        .unwrap();
        near(&s.probabilities(), &[0.2, 0.6, 0.2]);
        assert_eq!(s.coreset_budget()[2], Some(100));
        let mut zero = Mixer::new(
            &Mix::Coreset {
                cap: 0.0,
                base: proportional(),
            },
            sources(),
            3,
        )
        .unwrap();
        frequencies(&mut zero, 1000);
        assert_eq!(zero.draws()[2], 0);
        // Under a uniform base the replay source's chance is capped the same way: uniform gives
        // each source 1/3, so replay (1/3) against RL (2/3) with cap 0.25 becomes 1/6 of 2/3.
        let uniform = Mix::Coreset {
            cap: 0.25,
            base: Box::new(Mix::Uniform { seed: 3 }),
        };
        let u = Mixer::new(&uniform, sources(), 0).unwrap();
        near(&u.probabilities(), &[0.4, 0.4, 0.2]);
        // A base that does not sample cannot be capped.
        for base in [Mix::RoundRobin, Mix::All] {
            let c = Mix::Coreset {
                cap: 0.5,
                base: Box::new(base),
            };
            assert!(Mixer::new(&c, sources(), 0).is_err());
        }
        let only_replay = vec![sources()[2].clone()];
        assert!(Mixer::new(
            &Mix::Coreset {
                cap: 0.5,
                base: proportional()
            },
            only_replay,
            0
        )
        .is_err());
    }

    #[test]
    fn bad_configs_are_errors() {
        // Sources a weights(...) does not name weigh 1, as docs/language.md says.
        let partial = BTreeMap::from([("math".into(), 2.0)]);
        let p = Mixer::new(&Mix::Weights { weights: partial }, sources(), 0).unwrap();
        near(&p.probabilities(), &[0.5, 0.25, 0.25]);
        let unknown = BTreeMap::from([("maths".into(), 1.0)]);
        assert!(Mixer::new(&Mix::Weights { weights: unknown }, sources(), 0).is_err());
        let neg = BTreeMap::from([
            ("math".into(), -1.0),
            ("ground".into(), 1.0),
            ("ocr".into(), 1.0),
        ]);
        assert!(Mixer::new(&Mix::Weights { weights: neg }, sources(), 0).is_err());
        let zeros = BTreeMap::from([
            ("math".into(), 0.0),
            ("ground".into(), 0.0),
            ("ocr".into(), 0.0),
        ]);
        assert!(Mixer::new(&Mix::Weights { weights: zeros }, sources(), 0).is_err());
        let mut empty = sources();
        empty[0].size = 0;
        assert!(Mixer::new(&Mix::Uniform { seed: 0 }, empty, 0).is_err());
        assert!(Mixer::new(&Mix::Uniform { seed: 0 }, vec![], 0).is_err());
        assert!(Mixer::new(
            &Mix::Coreset {
                cap: f64::NAN,
                base: proportional()
            },
            sources(),
            0
        )
        .is_err());
    }

    #[test]
    fn seeded_and_resumable() {
        let draw = |seed, n| {
            let mut m = Mixer::new(&Mix::Uniform { seed }, sources(), 0).unwrap();
            (0..n).map(|_| m.next_draw()[0]).collect::<Vec<_>>()
        };
        assert_eq!(draw(42, 50), draw(42, 50));
        assert_ne!(draw(42, 50), draw(43, 50));
        // `uniform(seed)` draws with its own seed, also as a coreset's base; the others with the
        // stage's.
        let by_stage = |mix: &Mix, stage_seed| {
            let mut m = Mixer::new(mix, sources(), stage_seed).unwrap();
            (0..50).map(|_| m.next_draw()[0]).collect::<Vec<_>>()
        };
        let uniform = Mix::Uniform { seed: 42 };
        assert_eq!(by_stage(&uniform, 1), by_stage(&uniform, 2));
        assert_eq!(by_stage(&uniform, 1), draw(42, 50));
        let capped = |base| Mix::Coreset {
            cap: 1.0,
            base: Box::new(base),
        };
        assert_eq!(
            by_stage(&capped(Mix::Uniform { seed: 42 }), 1),
            by_stage(&capped(Mix::Uniform { seed: 42 }), 2)
        );
        assert_ne!(
            by_stage(&capped(Mix::Proportional), 1),
            by_stage(&capped(Mix::Proportional), 2)
        );
        for config in [Mix::Uniform { seed: 9 }, Mix::RoundRobin, Mix::Proportional] {
            let mut a = Mixer::new(&config, sources(), 9).unwrap();
            for _ in 0..7 {
                a.next_draw();
            }
            let json = serde_json::to_string(&a.cursor()).unwrap();
            let mut b = Mixer::new(&config, sources(), 9).unwrap();
            b.restore(serde_json::from_str(&json).unwrap()).unwrap();
            for _ in 0..20 {
                assert_eq!(a.next_draw(), b.next_draw());
            }
            assert_eq!(a.cursor(), b.cursor());
        }
        let nine = Mix::Uniform { seed: 9 };
        let mut two = Mixer::new(&nine, sources()[..2].to_vec(), 0).unwrap();
        let three = Mixer::new(&nine, sources(), 0).unwrap();
        assert!(two.restore(three.cursor()).is_err());
    }

    #[test]
    fn row_sampler_epochs_budget_and_resume() {
        let mut r = RowSampler::new(10, None, 5).unwrap();
        let first = r.next_rows(10);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(first, (0..10).collect::<Vec<_>>(), "shuffled");
        // A batch that crosses an epoch boundary: the next epoch is a different order.
        let second = r.next_rows(15);
        let mut e2 = second[..10].to_vec();
        assert_ne!(e2, first);
        e2.sort_unstable();
        assert_eq!(e2, (0..10).collect::<Vec<_>>());
        assert_eq!(r.cursor(), RowCursor { epoch: 2, pos: 5 });
        // Resume from a JSON cursor continues identically.
        let json = serde_json::to_string(&r.cursor()).unwrap();
        let mut resumed = RowSampler::new(10, None, 5).unwrap();
        resumed
            .restore(serde_json::from_str(&json).unwrap())
            .unwrap();
        assert_eq!(r.next_rows(23), resumed.next_rows(23));
        assert_ne!(RowSampler::new(10, None, 6).unwrap().next_rows(10), first);
        // A budget keeps one fixed subset across epochs.
        let mut c = RowSampler::new(100, Some(7), 5).unwrap();
        assert_eq!(c.len(), 7);
        let mut a = c.next_rows(7);
        let mut b = c.next_rows(7);
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert!(a.iter().all(|&i| i < 100));
        assert_eq!(RowSampler::new(5, Some(50), 1).unwrap().len(), 5);
        assert!(RowSampler::new(0, None, 1).is_err());
        assert!(RowSampler::new(5, Some(0), 1).is_err());
        assert!(r.restore(RowCursor { epoch: 0, pos: 11 }).is_err());
    }
}
