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

use std::collections::VecDeque;

use recap_plan::{RecapCombine, RecapDirection, Reweight};
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
    /// The objective the key belongs to, which `static` weights may name.
    pub objective: String,
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
    config: Reweight,
    keys: Vec<ObjectiveKey>,
    /// Under `static`, each key's fixed weight (1 where the plan names neither the key nor its
    /// objective); empty otherwise.
    fixed: Vec<f64>,
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
pub fn signals(history: &[f64], kind: KeyKind, direction: RecapDirection) -> (f64, f64) {
    let n = history.len();
    if n < 2 {
        return (1.0, 0.0);
    }
    let m = n / 2;
    let used = &history[n - 2 * m..];
    let (old, new) = used.split_at(m);
    let (so, sn): (f64, f64) = (old.iter().sum(), new.iter().sum());
    let c = match (direction, kind) {
        (RecapDirection::Regress, KeyKind::Sft) => sn / (so + SIGNAL_EPS),
        (RecapDirection::Regress, KeyKind::Rl) | (RecapDirection::Paper, _) => {
            so / (sn + SIGNAL_EPS)
        }
    };
    let mean = used.iter().sum::<f64>() / used.len() as f64;
    let var = used.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / used.len() as f64;
    (c, var.sqrt() / (mean + SIGNAL_EPS))
}

/// The window W of the histories: `recap`'s own, [`BASELINE_WINDOW`] for the baselines.
fn window(config: &Reweight) -> usize {
    match config {
        Reweight::Recap { window, .. } => *window as usize,
        _ => BASELINE_WINDOW,
    }
}

impl Reweighter {
    /// A reweighter of `keys` under the plan's policy. `static` weights name objectives (the
    /// weight applies to every key of that objective) or keys.
    pub fn new(config: &Reweight, keys: Vec<ObjectiveKey>) -> Result<Self, ReweightError> {
        if keys.is_empty() {
            return err("needs at least one objective key");
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.name == k.name) {
                return err(format!("objective key `{}` appears twice", k.name));
            }
        }
        let mut fixed = Vec::new();
        match config {
            Reweight::Recap {
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
            Reweight::Dwa { temperature } => {
                if !(temperature.is_finite() && *temperature > 0.0) {
                    return err(format!("dwa: temperature must be > 0, got {temperature}"));
                }
            }
            Reweight::Static { weights } => {
                fixed = vec![1.0; keys.len()];
                for (name, w) in weights {
                    // An objective's weight applies to that objective's keys only (its reward
                    // terms, or its SFT key), never to another objective on the same source; a
                    // name that is not an objective's is taken as a key's (`source.term`), which
                    // weighs one reward term before group normalisation.
                    let is_objective = keys.iter().any(|k| k.objective == name.as_str());
                    let named = |k: &ObjectiveKey| {
                        if is_objective {
                            k.objective == name.as_str()
                        } else {
                            k.name == name.as_str()
                        }
                    };
                    if !keys.iter().any(named) {
                        let known: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                        return err(format!(
                            "static: unknown objective key `{name}` (keys: {})",
                            known.join(", ")
                        ));
                    }
                    for (k, slot) in keys.iter().zip(fixed.iter_mut()) {
                        if named(k) {
                            if !(w.is_finite() && *w >= 0.0) {
                                return err(format!(
                                    "static: weight of `{}` must be >= 0, got {w}",
                                    k.name
                                ));
                            }
                            *slot = *w;
                        }
                    }
                }
            }
            Reweight::Uniform | Reweight::Rlw { .. } => {}
        }
        let rng = match config {
            Reweight::Rlw { seed } => Some(HostRng::new(*seed)),
            _ => None,
        };
        let histories = vec![VecDeque::with_capacity(2 * window(config)); keys.len()];
        Ok(Reweighter {
            config: config.clone(),
            keys,
            fixed,
            updates: 0,
            histories,
            rng,
        })
    }

    pub fn keys(&self) -> &[ObjectiveKey] {
        &self.keys
    }

    /// The weights before any update: 1, except under `static`, whose weights hold from the
    /// start.
    pub fn initial_lambdas(&self) -> Vec<f64> {
        if self.fixed.is_empty() {
            vec![1.0; self.keys.len()]
        } else {
            self.fixed.clone()
        }
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
        let cap = 2 * window(&self.config);
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
            Reweight::Recap { direction, .. } => *direction,
            _ => RecapDirection::Regress,
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
            Reweight::Recap {
                window,
                temperature,
                alpha,
                combine,
                warmup,
                ..
            } => {
                // The paper's Algorithm 2 holds every lambda at 1 before step 2W and computes
                // the weights from step 2W on, when a key drawn every step has a full ring.
                let first = if *warmup { 2 * *window } else { 0 };
                if self.updates >= first && !seen.is_empty() {
                    let t = *temperature;
                    match combine {
                        RecapCombine::Mixture => {
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
                        RecapCombine::Sum => scatter(
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
            Reweight::Uniform => {}
            Reweight::Static { .. } => lambda.clone_from(&self.fixed),
            Reweight::Dwa { temperature } => {
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
            Reweight::Rlw { .. } => {
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
        let cap = 2 * window(&self.config);
        if let Some(h) = state.histories.iter().find(|h| h.len() > cap) {
            return err(format!(
                "checkpoint history of {} entries exceeds this run's 2W = {cap}",
                h.len()
            ));
        }
        self.rng = match (&self.config, state.rng) {
            (Reweight::Rlw { .. }, Some(s)) => {
                Some(HostRng::from_state(&s).map_err(ReweightError)?)
            }
            (Reweight::Rlw { .. }, None) => {
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
    use recap_plan::Name;
    use std::collections::BTreeMap;
    use RecapCombine::{Mixture, Sum};
    use RecapDirection::{Paper, Regress};

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    fn keys() -> Vec<ObjectiveKey> {
        let k = |name: &str, source: &str, kind, objective: &str| ObjectiveKey {
            name: name.into(),
            source: source.into(),
            kind,
            objective: objective.into(),
        };
        vec![
            k("math.acc", "math", KeyKind::Rl, "reasoning"),
            k("math.fmt", "math", KeyKind::Rl, "reasoning"),
            k("general", "general", KeyKind::Sft, "replay"),
        ]
    }

    fn recap_config(window: u64, warmup: bool) -> Reweight {
        Reweight::Recap {
            window,
            temperature: 5.0,
            alpha: 0.5,
            combine: Mixture,
            direction: Regress,
            warmup,
        }
    }

    fn recap(
        window: u64,
        warmup: bool,
        combine: RecapCombine,
        direction: RecapDirection,
    ) -> Reweighter {
        Reweighter::new(
            &Reweight::Recap {
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
        let (c, i) = signals(&[0.2, 0.4, 0.6, 0.8], KeyKind::Rl, Regress);
        close(c, 0.6 / (1.4 + SIGNAL_EPS));
        close(i, 0.05f64.sqrt() / 0.5);
        // An odd length uses the newest 2m entries only.
        assert_eq!(
            signals(&[9.0, 0.2, 0.4, 0.6, 0.8], KeyKind::Rl, Regress),
            (c, i)
        );
        // SFT: a loss that rose from [1, 1] to [2, 2] regresses, c = 4 / 2.
        let (c, i) = signals(&[1.0, 1.0, 2.0, 2.0], KeyKind::Sft, Regress);
        close(c, 2.0);
        close(i, 0.5 / 1.5);
        // The paper's direction reads every key like a reward: mean(old) / mean(new).
        let (c, _) = signals(&[1.0, 1.0, 2.0, 2.0], KeyKind::Sft, Paper);
        close(c, 0.5);
        assert_eq!(signals(&[3.0], KeyKind::Sft, Regress), (1.0, 0.0));
        assert_eq!(signals(&[], KeyKind::Rl, Regress), (1.0, 0.0));
    }

    /// A fixed history over two sources, checked against RECAP.md's formulas step by step,
    /// including K = keys seen so far and pushes only on steps that drew the source.
    #[test]
    fn recap_weights_on_a_fixed_history() {
        let mut rw = recap(2, false, Mixture, Regress);
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
        let s = feed(&mut recap(10, false, Sum, Regress));
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
        // Warm-up: lambda = 1 before update 2W, the ordinary weights from update 2W on: with
        // W = 2 the 4th update has them, with W = 3 it is still in the warm-up.
        let warm2 = feed(&mut recap(2, true, Mixture, Regress));
        let plain2 = feed(&mut recap(2, false, Mixture, Regress));
        assert_eq!(lambdas(&warm2), lambdas(&plain2));
        let mut w3 = recap(3, true, Mixture, Regress);
        feed(&mut w3);
        let last_warm = w3.update(&["general"], &[("general", 4.0)]).unwrap();
        assert_eq!(lambdas(&last_warm), vec![1.0; 3], "update 5 < 2W = 6");
        let first_on = w3.update(&["general"], &[("general", 5.0)]).unwrap();
        assert_ne!(lambdas(&first_on), vec![1.0; 3], "update 6 = 2W");
        let warm3 = feed(&mut recap(3, true, Mixture, Regress));
        let plain3 = feed(&mut recap(3, false, Mixture, Regress));
        assert_eq!(lambdas(&warm3), vec![1.0; 3]);
        assert_ne!(lambdas(&plain3), vec![1.0; 3]);
        assert_eq!(
            warm3.keys[2].c, plain3.keys[2].c,
            "signals are still logged in warm-up"
        );
        // A huge temperature flattens the weights.
        let mut flat = Reweighter::new(
            &Reweight::Recap {
                window: 10,
                temperature: 1e9,
                alpha: 0.5,
                combine: Mixture,
                direction: Regress,
                warmup: false,
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
        let mut rw = recap(10, false, Mixture, Regress);
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
        assert!(Reweighter::new(&Reweight::Uniform, vec![]).is_err());
        let mut dup = keys();
        dup[1].name = "math.acc".into();
        assert!(Reweighter::new(&Reweight::Uniform, dup).is_err());
        let weights = |name: &str, w: f64| Reweight::Static {
            weights: BTreeMap::from([(Name::from(name), w)]),
        };
        let e = Reweighter::new(&weights("mathacc", 1.0), keys()).unwrap_err();
        assert!(
            e.to_string().contains("unknown objective key `mathacc`"),
            "{e}"
        );
        let e = Reweighter::new(&weights("reasoning", -1.0), keys()).unwrap_err();
        assert!(e.to_string().contains("weight of `math.acc`"), "{e}");
        assert!(Reweighter::new(&Reweight::Dwa { temperature: 0.0 }, keys()).is_err());
        let mut cfg = recap_config(10, false);
        if let Reweight::Recap { alpha, .. } = &mut cfg {
            *alpha = 1.5;
        }
        assert!(Reweighter::new(&cfg, keys()).is_err());
    }

    #[test]
    fn uniform_and_static_log_signals_too() {
        let mut u = Reweighter::new(&Reweight::Uniform, keys()).unwrap();
        assert_eq!(u.initial_lambdas(), vec![1.0; 3]);
        u.update(&["general"], &[("general", 1.0)]).unwrap();
        let s = u.update(&["general"], &[("general", 2.0)]).unwrap();
        assert_eq!(lambdas(&s), vec![1.0; 3]);
        close(s.keys[2].c, 2.0 / (1.0 + SIGNAL_EPS));
        let mut st = Reweighter::new(
            &Reweight::Static {
                weights: BTreeMap::from([("math.fmt".into(), 0.1)]),
            },
            keys(),
        )
        .unwrap();
        assert_eq!(st.initial_lambdas(), vec![1.0, 0.1, 1.0]);
        let s = st
            .update(&["math"], &[("math.acc", 1.0), ("math.fmt", 1.0)])
            .unwrap();
        assert_eq!(lambdas(&s), vec![1.0, 0.1, 1.0]);
        // An objective's weight applies to each of its keys; a key's name is taken as is. An
        // SFT objective on the RL source weighs only its own key.
        let by_objective = Reweighter::new(
            &Reweight::Static {
                weights: BTreeMap::from([("reasoning".into(), 2.0), ("general".into(), 0.5)]),
            },
            keys(),
        )
        .unwrap();
        assert_eq!(by_objective.initial_lambdas(), vec![2.0, 2.0, 0.5]);
        let mut shared = keys();
        shared.push(ObjectiveKey {
            name: "math".into(),
            source: "math".into(),
            kind: KeyKind::Sft,
            objective: "imitate".into(),
        });
        let one_objective = |name: &str| {
            Reweighter::new(
                &Reweight::Static {
                    weights: BTreeMap::from([(name.into(), 3.0)]),
                },
                shared.clone(),
            )
            .unwrap()
            .initial_lambdas()
        };
        assert_eq!(one_objective("imitate"), vec![1.0, 1.0, 1.0, 3.0]);
        assert_eq!(one_objective("reasoning"), vec![3.0, 3.0, 1.0, 1.0]);
    }

    #[test]
    fn dwa_by_hand() {
        let mut d = Reweighter::new(&Reweight::Dwa { temperature: 2.0 }, keys()).unwrap();
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
        let cfg = Reweight::Rlw { seed: 42 };
        let mut a = Reweighter::new(&cfg, keys()).unwrap();
        let mut b = Reweighter::new(&cfg, keys()).unwrap();
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
        let mut other = Reweighter::new(&Reweight::Rlw { seed: 7 }, keys()).unwrap();
        assert_ne!(lambdas(&feed(&mut other, 0)), lambdas(&s0));

        // Save after 3 steps, restore into a fresh reweighter, and continue side by side.
        for step in 1..3 {
            feed(&mut a, step);
        }
        let json = serde_json::to_string(&a.state()).unwrap();
        let mut resumed = Reweighter::new(&Reweight::Rlw { seed: 42 }, keys()).unwrap();
        resumed
            .restore(serde_json::from_str(&json).unwrap())
            .unwrap();
        for step in 3..8 {
            assert_eq!(feed(&mut a, step), feed(&mut resumed, step));
        }
    }

    #[test]
    fn recap_state_round_trips_and_restore_checks_shape() {
        let mut a = recap(2, false, Mixture, Regress);
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
        let mut b = recap(2, false, Mixture, Regress);
        b.restore(serde_json::from_str(&json).unwrap()).unwrap();
        for (src, sc) in &seq[3..] {
            assert_eq!(a.update(&[src], sc).unwrap(), b.update(&[src], sc).unwrap());
        }
        let mut fewer = Reweighter::new(&recap_config(10, false), keys()[..2].to_vec()).unwrap();
        assert!(fewer.restore(a.state()).is_err());
        let mut big = recap(10, false, Mixture, Regress);
        for v in 0..12 {
            big.update(&["general"], &[("general", v as f64)]).unwrap();
        }
        let mut small = recap(2, false, Mixture, Regress);
        assert!(small.restore(big.state()).is_err());
    }
}
