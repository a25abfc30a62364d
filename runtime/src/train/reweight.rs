//! Objective reweighting: takes, each step, the tracked scalar of every objective key whose
//! source the step drew (the batch-mean reward of an RL term, the NLL of an SFT source); gives a
//! weight `lambda` per key plus a serialisable snapshot of what produced it (signal, c, i,
//! lambda), and a serialisable state for checkpoints.
//!
//! `recap` follows RECAP.md exactly: a ring of the last 2W scalars per key, appended only on
//! steps that drew the key's source; convergence `c` (regression ratio) and instability `i`
//! (population std over mean) from that ring; `lambda = K * (alpha * softmax(c/T) +
//! (1 - alpha) * softmax(i/T))` over the K keys seen so far. The current step's scalars are
//! pushed before the weights are computed, as in the authors' code, so the weights a step uses
//! already see that step's batch. Keys not yet seen have `lambda = 1`, `c = 1`, `i = 0` and are
//! left out of the softmax. The baselines (`uniform`, `static`, `dwa`, `rlw`) keep the same
//! histories and log the same `c` and `i` (over a window of [`BASELINE_WINDOW`]) so runs
//! compare line by line. Weights are plain numbers: no gradient flows through them.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::rng::{HostRng, RngState};

/// The denominator guard of RECAP's ratios.
pub const SIGNAL_EPS: f64 = 1e-15;
/// The window W over which the baselines compute the `c` and `i` they log.
pub const BASELINE_WINDOW: usize = 10;

/// Whether a key's scalar is a reward (higher is better) or a loss (lower is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Rl,
    Sft,
}

/// One objective key: an (RL source, reward term) pair or an SFT source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectiveKey {
    /// Unique name, e.g. `math.accuracy` or `general`.
    pub name: String,
    /// The data source whose draws feed this key.
    pub source: String,
    pub kind: KeyKind,
}

/// How RECAP combines the two softmaxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// `K * (alpha * softmax(c/T) + (1 - alpha) * softmax(i/T))` (the authors' code).
    #[default]
    Mixture,
    /// `K * softmax((alpha * c + (1 - alpha) * i) / T)` (the paper's Eq. 1).
    Sum,
}

/// Which way RECAP reads the convergence ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// c > 1 means the key got worse (reward fell, loss rose).
    #[default]
    Regress,
    /// `c = mean(old) / mean(new)` for every key, as the paper writes it.
    Paper,
}

fn default_window() -> usize {
    10
}
fn default_recap_temperature() -> f64 {
    5.0
}
fn default_alpha() -> f64 {
    0.5
}
fn default_dwa_temperature() -> f64 {
    2.0
}

/// A reweighting policy and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReweightConfig {
    Recap {
        #[serde(default = "default_window")]
        window: usize,
        #[serde(default = "default_recap_temperature")]
        temperature: f64,
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default)]
        combine: Combine,
        #[serde(default)]
        direction: Direction,
        /// All lambda = 1 for the first `warmup` updates (the paper's Algorithm 1 uses 2W).
        #[serde(default)]
        warmup: u64,
    },
    Uniform,
    /// Fixed weights by key name; keys not named keep 1.
    Static {
        weights: BTreeMap<String, f64>,
    },
    /// Dynamic Weight Average: `lambda = K * softmax(r/T)` with `r` the ratio of a key's last
    /// two scalars (oriented like RECAP's `c`); all 1 for the first two updates.
    Dwa {
        #[serde(default = "default_dwa_temperature")]
        temperature: f64,
    },
    /// Random Loss Weighting: `lambda = K * softmax(z)`, `z ~ N(0, I)` redrawn every update.
    Rlw {
        seed: u64,
    },
}

impl ReweightConfig {
    /// The `recap` policy with the defaults of RECAP.md.
    pub fn recap_default() -> Self {
        ReweightConfig::Recap {
            window: default_window(),
            temperature: default_recap_temperature(),
            alpha: default_alpha(),
            combine: Combine::Mixture,
            direction: Direction::Regress,
            warmup: 0,
        }
    }

    fn window(&self) -> usize {
        match self {
            ReweightConfig::Recap { window, .. } => *window,
            _ => BASELINE_WINDOW,
        }
    }
}

/// An error in the reweighter's configuration or in what it was fed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("reweight: {0}")]
pub struct ReweightError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ReweightError> {
    Err(ReweightError(msg.into()))
}

/// What one key looked like after an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyWeight {
    pub key: String,
    pub source: String,
    pub kind: KeyKind,
    /// The scalar pushed this update (`None` when the key's source was not drawn).
    pub signal: Option<f64>,
    /// The newest scalar in the key's ring (this step's or an earlier one).
    pub last: Option<f64>,
    /// Entries in the key's ring after the update.
    pub history: usize,
    pub c: f64,
    pub i: f64,
    pub lambda: f64,
}

/// The weights of one update, in the order of the keys given at construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightSnapshot {
    /// 1 for the first update.
    pub update: u64,
    /// Keys seen so far (K).
    pub seen: usize,
    pub keys: Vec<KeyWeight>,
}

impl WeightSnapshot {
    pub fn lambda(&self, key: &str) -> Option<f64> {
        self.keys.iter().find(|k| k.key == key).map(|k| k.lambda)
    }
}

/// The resumable state of a [`Reweighter`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReweighterState {
    pub updates: u64,
    /// Per key (in key order), oldest first.
    pub histories: Vec<VecDeque<f64>>,
    pub rng: Option<RngState>,
}

/// A reweighting policy over a fixed list of objective keys.
#[derive(Debug, Clone)]
pub struct Reweighter {
    config: ReweightConfig,
    keys: Vec<ObjectiveKey>,
    updates: u64,
    histories: Vec<VecDeque<f64>>,
    rng: Option<HostRng>,
}

/// `K * softmax(x)` over `x`, with max subtraction.
fn k_softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| x.len() as f64 * v / sum).collect()
}

/// Writes `values` (one per seen key) into `lambda` at the seen keys' positions.
fn scatter(lambda: &mut [f64], seen: &[usize], values: Vec<f64>) {
    for (&idx, v) in seen.iter().zip(values) {
        lambda[idx] = v;
    }
}

/// RECAP's `(c, i)` of one history under a direction.
pub fn signals(history: &[f64], kind: KeyKind, direction: Direction) -> (f64, f64) {
    let n = history.len();
    if n < 2 {
        return (1.0, 0.0);
    }
    let m = n / 2;
    let used = &history[n - 2 * m..];
    let (old, new) = used.split_at(m);
    let (so, sn): (f64, f64) = (old.iter().sum(), new.iter().sum());
    let c = match (direction, kind) {
        (Direction::Regress, KeyKind::Sft) => sn / (so + SIGNAL_EPS),
        (Direction::Regress, KeyKind::Rl) | (Direction::Paper, _) => so / (sn + SIGNAL_EPS),
    };
    let mean = used.iter().sum::<f64>() / used.len() as f64;
    let var = used.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / used.len() as f64;
    (c, var.sqrt() / (mean + SIGNAL_EPS))
}

impl Reweighter {
    pub fn new(config: ReweightConfig, keys: Vec<ObjectiveKey>) -> Result<Self, ReweightError> {
        if keys.is_empty() {
            return err("needs at least one objective key");
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.name == k.name) {
                return err(format!("objective key `{}` appears twice", k.name));
            }
        }
        match &config {
            ReweightConfig::Recap {
                window,
                temperature,
                alpha,
                ..
            } => {
                if *window == 0 {
                    return err("recap: window must be >= 1");
                }
                if !(temperature.is_finite() && *temperature > 0.0) {
                    return err(format!("recap: temperature must be > 0, got {temperature}"));
                }
                if !(0.0..=1.0).contains(alpha) {
                    return err(format!("recap: alpha must be in [0, 1], got {alpha}"));
                }
            }
            ReweightConfig::Dwa { temperature } => {
                if !(temperature.is_finite() && *temperature > 0.0) {
                    return err(format!("dwa: temperature must be > 0, got {temperature}"));
                }
            }
            ReweightConfig::Static { weights } => {
                for (name, w) in weights {
                    if !keys.iter().any(|k| &k.name == name) {
                        let known: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                        return err(format!(
                            "static: unknown objective key `{name}` (keys: {})",
                            known.join(", ")
                        ));
                    }
                    if !(w.is_finite() && *w >= 0.0) {
                        return err(format!("static: weight of `{name}` must be >= 0, got {w}"));
                    }
                }
            }
            ReweightConfig::Uniform | ReweightConfig::Rlw { .. } => {}
        }
        let rng = match &config {
            ReweightConfig::Rlw { seed } => Some(HostRng::new(*seed)),
            _ => None,
        };
        let histories = vec![VecDeque::with_capacity(2 * config.window()); keys.len()];
        Ok(Reweighter {
            config,
            keys,
            updates: 0,
            histories,
            rng,
        })
    }

    pub fn keys(&self) -> &[ObjectiveKey] {
        &self.keys
    }

    pub fn config(&self) -> &ReweightConfig {
        &self.config
    }

    /// One update: pushes `scalars` (key name, value) for keys whose source is in `drawn`, then
    /// computes every key's weight. A scalar for a key whose source was not drawn is an error,
    /// so the push-only-when-drawn rule cannot be broken silently; a drawn key without a scalar
    /// (no completion applied to its term) is simply not pushed.
    pub fn update(
        &mut self,
        drawn: &[&str],
        scalars: &[(&str, f64)],
    ) -> Result<WeightSnapshot, ReweightError> {
        let mut pushed = vec![None; self.keys.len()];
        for &(name, value) in scalars {
            let Some(idx) = self.keys.iter().position(|k| k.name == name) else {
                return err(format!("scalar for unknown objective key `{name}`"));
            };
            let key = &self.keys[idx];
            if !drawn.contains(&key.source.as_str()) {
                return err(format!(
                    "scalar for `{name}` but its source `{}` was not drawn this step",
                    key.source
                ));
            }
            if !value.is_finite() {
                return err(format!("scalar for `{name}` is not finite ({value})"));
            }
            if pushed[idx].is_some() {
                return err(format!("two scalars for `{name}` in one step"));
            }
            pushed[idx] = Some(value);
        }
        let cap = 2 * self.config.window();
        for (h, v) in self.histories.iter_mut().zip(&pushed) {
            if let Some(v) = v {
                if h.len() == cap {
                    h.pop_front();
                }
                h.push_back(*v);
            }
        }
        self.updates += 1;
        Ok(self.snapshot_with(pushed))
    }

    fn snapshot_with(&mut self, pushed: Vec<Option<f64>>) -> WeightSnapshot {
        let direction = match &self.config {
            ReweightConfig::Recap { direction, .. } => *direction,
            _ => Direction::Regress,
        };
        let ci: Vec<(f64, f64)> = self
            .histories
            .iter()
            .zip(&self.keys)
            .map(|(h, k)| signals(&h.iter().copied().collect::<Vec<_>>(), k.kind, direction))
            .collect();
        let seen: Vec<usize> = (0..self.keys.len())
            .filter(|&k| !self.histories[k].is_empty())
            .collect();
        let k = seen.len() as f64;
        let mut lambda = vec![1.0; self.keys.len()];
        match &self.config {
            ReweightConfig::Recap {
                temperature,
                alpha,
                combine,
                warmup,
                ..
            } => {
                if self.updates > *warmup && !seen.is_empty() {
                    let t = *temperature;
                    match combine {
                        Combine::Mixture => {
                            let sc =
                                k_softmax(&seen.iter().map(|&i| ci[i].0 / t).collect::<Vec<_>>());
                            let si =
                                k_softmax(&seen.iter().map(|&i| ci[i].1 / t).collect::<Vec<_>>());
                            scatter(
                                &mut lambda,
                                &seen,
                                sc.iter()
                                    .zip(&si)
                                    .map(|(a, b)| alpha * a + (1.0 - alpha) * b)
                                    .collect(),
                            );
                        }
                        Combine::Sum => scatter(
                            &mut lambda,
                            &seen,
                            k_softmax(
                                &seen
                                    .iter()
                                    .map(|&i| (alpha * ci[i].0 + (1.0 - alpha) * ci[i].1) / t)
                                    .collect::<Vec<_>>(),
                            ),
                        ),
                    }
                }
            }
            ReweightConfig::Uniform => {}
            ReweightConfig::Static { weights } => {
                for (idx, key) in self.keys.iter().enumerate() {
                    if let Some(w) = weights.get(&key.name) {
                        lambda[idx] = *w;
                    }
                }
            }
            ReweightConfig::Dwa { temperature } => {
                if self.updates > 2 && !seen.is_empty() {
                    let r: Vec<f64> = seen
                        .iter()
                        .map(|&i| {
                            let h = &self.histories[i];
                            let n = h.len();
                            let ratio = if n < 2 {
                                1.0
                            } else {
                                let (prev, last) = (h[n - 2], h[n - 1]);
                                match self.keys[i].kind {
                                    KeyKind::Sft => last / (prev + SIGNAL_EPS),
                                    KeyKind::Rl => prev / (last + SIGNAL_EPS),
                                }
                            };
                            ratio / temperature
                        })
                        .collect();
                    scatter(&mut lambda, &seen, k_softmax(&r));
                }
            }
            ReweightConfig::Rlw { .. } => {
                let rng = self.rng.as_mut().expect("rlw has an rng from new()");
                let z: Vec<f64> = seen.iter().map(|_| rng.normal()).collect();
                if !z.is_empty() {
                    scatter(&mut lambda, &seen, k_softmax(&z));
                }
            }
        }
        WeightSnapshot {
            update: self.updates,
            seen: k as usize,
            keys: self
                .keys
                .iter()
                .enumerate()
                .map(|(idx, key)| KeyWeight {
                    key: key.name.clone(),
                    source: key.source.clone(),
                    kind: key.kind,
                    signal: pushed[idx],
                    last: self.histories[idx].back().copied(),
                    history: self.histories[idx].len(),
                    c: ci[idx].0,
                    i: ci[idx].1,
                    lambda: lambda[idx],
                })
                .collect(),
        }
    }

    pub fn state(&self) -> ReweighterState {
        ReweighterState {
            updates: self.updates,
            histories: self.histories.clone(),
            rng: self.rng.as_ref().map(HostRng::state),
        }
    }

    /// Restores a state saved by [`Reweighter::state`] under the same keys and config.
    pub fn restore(&mut self, state: ReweighterState) -> Result<(), ReweightError> {
        if state.histories.len() != self.keys.len() {
            return err(format!(
                "checkpoint has {} key histories, this run has {} keys",
                state.histories.len(),
                self.keys.len()
            ));
        }
        let cap = 2 * self.config.window();
        if let Some(h) = state.histories.iter().find(|h| h.len() > cap) {
            return err(format!(
                "checkpoint history of {} entries exceeds this run's 2W = {cap}",
                h.len()
            ));
        }
        self.rng = match (&self.config, state.rng) {
            (ReweightConfig::Rlw { .. }, Some(s)) => {
                Some(HostRng::from_state(&s).map_err(ReweightError)?)
            }
            (ReweightConfig::Rlw { .. }, None) => {
                return err("checkpoint of an rlw reweighter has no RNG state")
            }
            _ => None,
        };
        self.updates = state.updates;
        self.histories = state.histories;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    fn keys() -> Vec<ObjectiveKey> {
        let k = |name: &str, source: &str, kind| ObjectiveKey {
            name: name.into(),
            source: source.into(),
            kind,
        };
        vec![
            k("math.acc", "math", KeyKind::Rl),
            k("math.fmt", "math", KeyKind::Rl),
            k("general", "general", KeyKind::Sft),
        ]
    }

    fn recap(window: usize, warmup: u64, combine: Combine, direction: Direction) -> Reweighter {
        Reweighter::new(
            ReweightConfig::Recap {
                window,
                temperature: 5.0,
                alpha: 0.5,
                combine,
                direction,
                warmup,
            },
            keys(),
        )
        .unwrap()
    }

    fn lambdas(s: &WeightSnapshot) -> Vec<f64> {
        s.keys.iter().map(|k| k.lambda).collect()
    }

    #[test]
    fn signals_by_hand() {
        // Old [0.2, 0.4], new [0.6, 0.8]: reward rose, so c = 0.6 / 1.4 < 1. Mean 0.5,
        // population variance (0.09 + 0.01 + 0.01 + 0.09) / 4 = 0.05.
        let (c, i) = signals(&[0.2, 0.4, 0.6, 0.8], KeyKind::Rl, Direction::Regress);
        close(c, 0.6 / (1.4 + SIGNAL_EPS));
        close(i, 0.05f64.sqrt() / 0.5);
        // An odd length uses the newest 2m entries only.
        assert_eq!(
            signals(&[9.0, 0.2, 0.4, 0.6, 0.8], KeyKind::Rl, Direction::Regress),
            (c, i)
        );
        // SFT: a loss that rose from [1, 1] to [2, 2] regresses, c = 4 / 2.
        let (c, i) = signals(&[1.0, 1.0, 2.0, 2.0], KeyKind::Sft, Direction::Regress);
        close(c, 2.0);
        close(i, 0.5 / 1.5);
        // The paper's direction reads every key like a reward: mean(old) / mean(new).
        let (c, _) = signals(&[1.0, 1.0, 2.0, 2.0], KeyKind::Sft, Direction::Paper);
        close(c, 0.5);
        assert_eq!(
            signals(&[3.0], KeyKind::Sft, Direction::Regress),
            (1.0, 0.0)
        );
        assert_eq!(signals(&[], KeyKind::Rl, Direction::Regress), (1.0, 0.0));
    }

    /// A fixed history over two sources, checked against RECAP.md's formulas step by step,
    /// including K = keys seen so far and pushes only on steps that drew the source.
    #[test]
    fn recap_weights_on_a_fixed_history() {
        let mut rw = recap(2, 0, Combine::Mixture, Direction::Regress);
        // Step 1 draws math: two keys seen, both with one entry, so c = 1, i = 0, lambda = 1.
        let s1 = rw
            .update(&["math"], &[("math.acc", 0.5), ("math.fmt", 1.0)])
            .unwrap();
        assert_eq!(s1.seen, 2);
        assert_eq!(lambdas(&s1), vec![1.0, 1.0, 1.0]);
        assert_eq!(s1.keys[2].history, 0);
        assert_eq!(s1.keys[2].signal, None);
        // Step 2 draws general: K = 3; the math histories do not grow.
        let s2 = rw.update(&["general"], &[("general", 2.0)]).unwrap();
        assert_eq!(s2.seen, 3);
        assert_eq!((s2.keys[0].history, s2.keys[2].history), (1, 1));
        assert_eq!((s2.keys[0].signal, s2.keys[0].last), (None, Some(0.5)));
        assert_eq!(s2.keys[2].signal, Some(2.0));
        assert_eq!(lambdas(&s2), vec![1.0, 1.0, 1.0]);
        // Step 3 draws math: acc [0.5, 0.25] -> c = 2, i = 0.125 / 0.375; fmt [1, 1] -> c = 1,
        // i = 0; general [2] -> c = 1, i = 0.
        let s3 = rw
            .update(&["math"], &[("math.acc", 0.25), ("math.fmt", 1.0)])
            .unwrap();
        let c_acc = 0.5 / (0.25 + SIGNAL_EPS);
        let i_acc = 0.125 / (0.375 + SIGNAL_EPS);
        close(s3.keys[0].c, c_acc);
        close(s3.keys[0].i, i_acc);
        close(s3.keys[1].c, 1.0 / (1.0 + SIGNAL_EPS));
        assert_eq!(s3.keys[1].i, 0.0);
        let softmax = |x: [f64; 3]| {
            let e = x.map(|v| (v / 5.0).exp());
            let s: f64 = e.iter().sum();
            e.map(|v| v / s)
        };
        let sc = softmax([c_acc, 1.0 / (1.0 + SIGNAL_EPS), 1.0]);
        let si = softmax([i_acc, 0.0, 0.0]);
        for k in 0..3 {
            close(s3.keys[k].lambda, 3.0 * (0.5 * sc[k] + 0.5 * si[k]));
        }
        // The noisier, regressing accuracy key gets the most weight; the mean stays 1.
        assert!(s3.keys[0].lambda > s3.keys[2].lambda && s3.keys[2].lambda > s3.keys[1].lambda);
        close(lambdas(&s3).iter().sum::<f64>() / 3.0, 1.0);

        // The ring keeps the last 2W = 4 scalars.
        for v in [3.0, 4.0, 5.0, 6.0, 7.0] {
            rw.update(&["general"], &[("general", v)]).unwrap();
        }
        let state = rw.state();
        assert_eq!(state.histories[2], VecDeque::from(vec![4.0, 5.0, 6.0, 7.0]));
        assert_eq!(state.histories[0], VecDeque::from(vec![0.5, 0.25]));
    }

    #[test]
    fn combine_sum_warmup_and_temperature() {
        let feed = |rw: &mut Reweighter| {
            rw.update(&["math"], &[("math.acc", 0.5), ("math.fmt", 1.0)])
                .unwrap();
            rw.update(&["general"], &[("general", 2.0)]).unwrap();
            rw.update(&["math"], &[("math.acc", 0.25), ("math.fmt", 1.0)])
                .unwrap();
            rw.update(&["general"], &[("general", 3.0)]).unwrap()
        };
        // combine = sum: K * softmax((alpha c + (1 - alpha) i) / T).
        let s = feed(&mut recap(10, 0, Combine::Sum, Direction::Regress));
        let z: Vec<f64> = s
            .keys
            .iter()
            .map(|k| (0.5 * k.c + 0.5 * k.i) / 5.0)
            .collect();
        let e: Vec<f64> = z.iter().map(|v| v.exp()).collect();
        let total: f64 = e.iter().sum();
        for (k, ek) in s.keys.iter().zip(&e) {
            close(k.lambda, 3.0 * ek / total);
        }
        // general [2, 3]: loss rose, c = 1.5, i = 0.5 / 2.5.
        close(s.keys[2].c, 3.0 / (2.0 + SIGNAL_EPS));
        close(s.keys[2].i, 0.5 / (2.5 + SIGNAL_EPS));
        // Warm-up: lambda = 1 during the first 3 updates, the ordinary weights on the 4th.
        let mut warm = recap(10, 3, Combine::Mixture, Direction::Regress);
        let mut plain = recap(10, 0, Combine::Mixture, Direction::Regress);
        let warm_s = feed(&mut warm);
        let plain_s = feed(&mut plain);
        assert_eq!(lambdas(&warm_s), lambdas(&plain_s));
        let mut warm4 = recap(10, 4, Combine::Mixture, Direction::Regress);
        let w4 = feed(&mut warm4);
        assert_eq!(lambdas(&w4), vec![1.0; 3]);
        assert_eq!(
            w4.keys[2].c, plain_s.keys[2].c,
            "signals are still logged in warm-up"
        );
        // A huge temperature flattens the weights.
        let mut flat = Reweighter::new(
            ReweightConfig::Recap {
                window: 10,
                temperature: 1e9,
                alpha: 0.5,
                combine: Combine::Mixture,
                direction: Direction::Regress,
                warmup: 0,
            },
            keys(),
        )
        .unwrap();
        for l in lambdas(&feed(&mut flat)) {
            assert!((l - 1.0).abs() < 1e-8);
        }
    }

    #[test]
    fn bad_feeds_and_configs_are_errors() {
        let mut rw = recap(10, 0, Combine::Mixture, Direction::Regress);
        let e = rw.update(&["math"], &[("general", 1.0)]).unwrap_err();
        assert!(e.to_string().contains("not drawn"), "{e}");
        assert!(rw.update(&["math"], &[("nope", 1.0)]).is_err());
        assert!(rw.update(&["math"], &[("math.acc", f64::NAN)]).is_err());
        assert!(rw
            .update(&["math"], &[("math.acc", 1.0), ("math.acc", 2.0)])
            .is_err());
        // A drawn key without a scalar is simply not pushed.
        let s = rw.update(&["math"], &[("math.fmt", 1.0)]).unwrap();
        assert_eq!((s.keys[0].history, s.keys[1].history, s.seen), (0, 1, 1));
        assert!(Reweighter::new(ReweightConfig::Uniform, vec![]).is_err());
        let mut dup = keys();
        dup[1].name = "math.acc".into();
        assert!(Reweighter::new(ReweightConfig::Uniform, dup).is_err());
        assert!(Reweighter::new(
            ReweightConfig::Static {
                weights: BTreeMap::from([("mathacc".to_string(), 1.0)])
            },
            keys()
        )
        .is_err());
        assert!(Reweighter::new(ReweightConfig::Dwa { temperature: 0.0 }, keys()).is_err());
        let mut cfg = ReweightConfig::recap_default();
        if let ReweightConfig::Recap { alpha, .. } = &mut cfg {
            *alpha = 1.5;
        }
        assert!(Reweighter::new(cfg, keys()).is_err());
    }

    #[test]
    fn uniform_and_static_log_signals_too() {
        let mut u = Reweighter::new(ReweightConfig::Uniform, keys()).unwrap();
        u.update(&["general"], &[("general", 1.0)]).unwrap();
        let s = u.update(&["general"], &[("general", 2.0)]).unwrap();
        assert_eq!(lambdas(&s), vec![1.0; 3]);
        close(s.keys[2].c, 2.0 / (1.0 + SIGNAL_EPS));
        let mut st = Reweighter::new(
            ReweightConfig::Static {
                weights: BTreeMap::from([("math.fmt".to_string(), 0.1)]),
            },
            keys(),
        )
        .unwrap();
        let s = st
            .update(&["math"], &[("math.acc", 1.0), ("math.fmt", 1.0)])
            .unwrap();
        assert_eq!(lambdas(&s), vec![1.0, 0.1, 1.0]);
    }

    #[test]
    fn dwa_by_hand() {
        let mut d = Reweighter::new(ReweightConfig::Dwa { temperature: 2.0 }, keys()).unwrap();
        let s1 = d
            .update(&["math"], &[("math.acc", 0.5), ("math.fmt", 1.0)])
            .unwrap();
        let s2 = d
            .update(
                &["general", "math"],
                &[("general", 2.0), ("math.acc", 0.25), ("math.fmt", 1.0)],
            )
            .unwrap();
        assert_eq!(lambdas(&s1), vec![1.0; 3]);
        assert_eq!(lambdas(&s2), vec![1.0; 3]);
        let s3 = d.update(&["general"], &[("general", 3.0)]).unwrap();
        // r: acc 0.5 / 0.25 = 2 (reward fell), fmt 1, general 3 / 2 = 1.5 (loss rose).
        let r = [
            0.5 / (0.25 + SIGNAL_EPS),
            1.0 / (1.0 + SIGNAL_EPS),
            3.0 / (2.0 + SIGNAL_EPS),
        ];
        let e = r.map(|v| (v / 2.0).exp());
        let total: f64 = e.iter().sum();
        for (key, ek) in s3.keys.iter().zip(e) {
            close(key.lambda, 3.0 * ek / total);
        }
    }

    #[test]
    fn rlw_is_seeded_and_resumes_exactly() {
        let cfg = ReweightConfig::Rlw { seed: 42 };
        let mut a = Reweighter::new(cfg.clone(), keys()).unwrap();
        let mut b = Reweighter::new(cfg, keys()).unwrap();
        let feed = |rw: &mut Reweighter, step: usize| {
            if step & 1 == 0 {
                rw.update(&["math"], &[("math.acc", 0.5), ("math.fmt", 1.0)])
                    .unwrap()
            } else {
                rw.update(&["general"], &[("general", 1.0)]).unwrap()
            }
        };
        let s0 = feed(&mut a, 0);
        assert_eq!(s0, feed(&mut b, 0));
        // Only the two seen keys are drawn for; their mean weight is 1 and they differ.
        assert_eq!(s0.keys[2].lambda, 1.0);
        close((s0.keys[0].lambda + s0.keys[1].lambda) / 2.0, 1.0);
        assert_ne!(s0.keys[0].lambda, s0.keys[1].lambda);
        let mut other = Reweighter::new(ReweightConfig::Rlw { seed: 7 }, keys()).unwrap();
        assert_ne!(lambdas(&feed(&mut other, 0)), lambdas(&s0));

        // Save after 3 steps, restore into a fresh reweighter, and continue side by side.
        for step in 1..3 {
            feed(&mut a, step);
        }
        let json = serde_json::to_string(&a.state()).unwrap();
        let mut resumed = Reweighter::new(ReweightConfig::Rlw { seed: 42 }, keys()).unwrap();
        resumed
            .restore(serde_json::from_str(&json).unwrap())
            .unwrap();
        for step in 3..8 {
            assert_eq!(feed(&mut a, step), feed(&mut resumed, step));
        }
    }

    #[test]
    fn recap_state_round_trips_and_restore_checks_shape() {
        let mut a = recap(2, 0, Combine::Mixture, Direction::Regress);
        let seq: Vec<(&str, Vec<(&str, f64)>)> = vec![
            ("math", vec![("math.acc", 0.5), ("math.fmt", 1.0)]),
            ("general", vec![("general", 2.0)]),
            ("math", vec![("math.acc", 0.75), ("math.fmt", 0.5)]),
            ("general", vec![("general", 1.5)]),
            ("math", vec![("math.acc", 0.25), ("math.fmt", 1.0)]),
            ("general", vec![("general", 1.0)]),
        ];
        for (src, sc) in &seq[..3] {
            a.update(&[src], sc).unwrap();
        }
        let json = serde_json::to_string(&a.state()).unwrap();
        let mut b = recap(2, 0, Combine::Mixture, Direction::Regress);
        b.restore(serde_json::from_str(&json).unwrap()).unwrap();
        for (src, sc) in &seq[3..] {
            assert_eq!(a.update(&[src], sc).unwrap(), b.update(&[src], sc).unwrap());
        }
        let mut fewer =
            Reweighter::new(ReweightConfig::recap_default(), keys()[..2].to_vec()).unwrap();
        assert!(fewer.restore(a.state()).is_err());
        let mut big = recap(10, 0, Combine::Mixture, Direction::Regress);
        for v in 0..12 {
            big.update(&["general"], &[("general", v as f64)]).unwrap();
        }
        let mut small = recap(2, 0, Combine::Mixture, Direction::Regress);
        assert!(small.restore(big.state()).is_err());
        let cfg: ReweightConfig =
            serde_json::from_str(r#"{"kind": "recap", "window": 5}"#).unwrap();
        assert_eq!(
            cfg,
            ReweightConfig::Recap {
                window: 5,
                temperature: 5.0,
                alpha: 0.5,
                combine: Combine::Mixture,
                direction: Direction::Regress,
                warmup: 0
            }
        );
    }
}
