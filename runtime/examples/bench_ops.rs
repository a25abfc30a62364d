//! Microbenchmark of the tensor building blocks in `recap_runtime::ops`: takes no input, prints
//! the best time of each op's forward and forward+backward on the shapes of the fixture model
//! (64 sequences x 23 tokens, hidden 128, 4 heads, 2 KV heads, head_dim 32, intermediate 512,
//! vocab 56, causal attention), fused kernel against the reference composition, and the speed-up.
//!
//! Run: `cargo run --release -p recap-runtime --example bench_ops` (the dev profile also
//! optimises the runtime and candle, so plain `cargo run` gives comparable figures).
//! `BENCH_ITERS=N` changes the number of timed iterations (default 200). The last rows compare
//! matmul layouts instead (see the comment in `main`).

use candle_core::{Device, Result, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use recap_runtime::ops::{self, reference};
use std::time::Instant;

const B: usize = 64;
const S: usize = 23;
const HIDDEN: usize = 128;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 32;
const INTER: usize = 512;
const VOCAB: usize = 56;

fn rand_t(rng: &mut StdRng, dims: &[usize], scale: f32) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

/// Best wall time in microseconds of `f` over `iters` runs, after a few warm-up runs. The
/// minimum rather than the median, because the machine is shared and a run that lost its core
/// to another process measures that process, not the op.
fn best_us(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..5 {
        f()?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(times.into_iter().fold(f64::INFINITY, f64::min))
}

/// Builds an op's output from the variables: fused when the flag is set, else the reference.
type RunFn = Box<dyn Fn(&[Var], bool) -> Result<Tensor>>;

/// One benchmarked op.
struct Case {
    name: &'static str,
    vars: Vec<Var>,
    run: RunFn,
}

fn bench(case: &Case, iters: usize, rng: &mut StdRng) -> Result<()> {
    let out = (case.run)(&case.vars, true)?;
    // The backward is driven by sum(out * probe), so every output element has its own gradient
    // and no op sees the broadcast gradient of a plain sum.
    let probe = rand_t(rng, out.dims(), 1.0)?;
    let mut row = vec![];
    for fused in [true, false] {
        let fwd = best_us(iters, || {
            (case.run)(&case.vars, fused)?;
            Ok(())
        })?;
        let both = best_us(iters, || {
            let out = (case.run)(&case.vars, fused)?;
            let grads = (out * &probe)?.sum_all()?.backward()?;
            assert!(grads.get(&case.vars[0]).is_some());
            Ok(())
        })?;
        row.push((fwd, both));
    }
    let ((ff, fb), (rf, rb)) = (row[0], row[1]);
    println!(
        "{:<22} {:>10.1} {:>10.1} {:>7.2}x {:>12.1} {:>12.1} {:>7.2}x",
        case.name,
        ff,
        rf,
        rf / ff,
        fb,
        rb,
        rb / fb
    );
    Ok(())
}

fn main() -> Result<()> {
    let iters = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut rng = StdRng::seed_from_u64(0);
    let v =
        |rng: &mut StdRng, dims: &[usize], scale: f32| Var::from_tensor(&rand_t(rng, dims, scale)?);

    let half = HEAD_DIM / 2;
    let angles: Vec<f32> = (0..64 * half)
        .map(|i| (i / half) as f32 / 10000f32.powf(2.0 * (i % half) as f32 / HEAD_DIM as f32))
        .collect();
    let angles = Tensor::from_vec(angles, (64, half), &Device::Cpu)?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    let targets: Vec<u32> = (0..B * S)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect();
    let targets = Tensor::from_vec(targets, (B, S), &Device::Cpu)?;

    let cases = vec![
        // The cost of the harness itself (multiply by the probe, sum, backward) on a tensor of
        // the hidden states' size; the forward+backward figures below include it.
        Case {
            name: "harness (B,S,hidden)",
            vars: vec![v(&mut rng, &[B, S, HIDDEN], 1.0)?],
            run: Box::new(|x, _| Ok(x[0].as_tensor().clone())),
        },
        Case {
            name: "rms_norm",
            vars: vec![
                v(&mut rng, &[B, S, HIDDEN], 2.0)?,
                v(&mut rng, &[HIDDEN], 1.0)?,
            ],
            run: Box::new(|x, fused| {
                let (x, w) = (x[0].as_tensor(), x[1].as_tensor());
                if fused {
                    ops::rms_norm(x, w, 1e-6)
                } else {
                    reference::rms_norm(x, w, 1e-6)
                }
            }),
        },
        Case {
            name: "softmax (scores)",
            vars: vec![v(&mut rng, &[B, HEADS, S, S], 4.0)?],
            run: Box::new(|x, fused| {
                if fused {
                    ops::softmax_last_dim(x[0].as_tensor())
                } else {
                    reference::softmax_last_dim(x[0].as_tensor())
                }
            }),
        },
        Case {
            name: "rope q (transposed)",
            vars: vec![v(&mut rng, &[B, S, HEADS, HEAD_DIM], 2.0)?],
            run: {
                let (cos, sin) = (cos.narrow(0, 0, S)?, sin.narrow(0, 0, S)?);
                Box::new(move |x, fused| {
                    let q = x[0].as_tensor().transpose(1, 2)?;
                    if fused {
                        ops::rope(&q, &cos, &sin)
                    } else {
                        reference::rope(&q.contiguous()?, &cos, &sin)
                    }
                })
            },
        },
        Case {
            name: "rope k (transposed)",
            vars: vec![v(&mut rng, &[B, S, KV_HEADS, HEAD_DIM], 2.0)?],
            run: {
                let (cos, sin) = (cos.narrow(0, 0, S)?, sin.narrow(0, 0, S)?);
                Box::new(move |x, fused| {
                    let k = x[0].as_tensor().transpose(1, 2)?;
                    if fused {
                        ops::rope(&k, &cos, &sin)
                    } else {
                        reference::rope(&k.contiguous()?, &cos, &sin)
                    }
                })
            },
        },
        Case {
            name: "swiglu",
            vars: vec![
                v(&mut rng, &[B, S, INTER], 4.0)?,
                v(&mut rng, &[B, S, INTER], 2.0)?,
            ],
            run: Box::new(|x, fused| {
                let (g, u) = (x[0].as_tensor(), x[1].as_tensor());
                if fused {
                    ops::swiglu(g, u)
                } else {
                    reference::swiglu(g, u)
                }
            }),
        },
        Case {
            name: "attention (causal)",
            vars: vec![
                v(&mut rng, &[B, HEADS, S, HEAD_DIM], 1.0)?,
                v(&mut rng, &[B, KV_HEADS, S, HEAD_DIM], 1.0)?,
                v(&mut rng, &[B, KV_HEADS, S, HEAD_DIM], 1.0)?,
            ],
            run: {
                let causal: Vec<f32> = (0..S * S)
                    .map(|i| {
                        if i % S <= i / S {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(causal, (1, 1, S, S), &Device::Cpu)?;
                let scale = 1.0 / (HEAD_DIM as f64).sqrt();
                Box::new(move |x, fused| {
                    let (q, k, v) = (x[0].as_tensor(), x[1].as_tensor(), x[2].as_tensor());
                    if fused {
                        ops::attention(q, k, v, Some(&mask), scale)
                    } else {
                        reference::attention(q, k, v, Some(&mask), scale)
                    }
                })
            },
        },
        Case {
            name: "log_softmax_gather",
            vars: vec![v(&mut rng, &[B, S, VOCAB], 6.0)?],
            run: Box::new(move |x, fused| {
                if fused {
                    ops::log_softmax_gather(x[0].as_tensor(), &targets)
                } else {
                    reference::log_softmax_gather(x[0].as_tensor(), &targets)
                }
            }),
        },
    ];

    // Matmul layout: the models store a linear weight as (out, in) and multiply by its
    // transposed view, as candle-nn's Linear does. These rows compare that (the "ref" column)
    // with a weight stored as (in, out), contiguous for the product (the "fused" column).
    let mut cases = cases;
    for (name, m, k, n) in [
        ("matmul up (x·W^T)", B * S, HIDDEN, INTER),
        ("matmul down (x·W^T)", B * S, INTER, HIDDEN),
        ("matmul lm_head", B * S, HIDDEN, VOCAB),
    ] {
        let w_out_in = v(&mut rng, &[n, k], 0.1)?;
        let w_in_out = Var::from_tensor(&w_out_in.as_tensor().t()?.contiguous()?)?;
        cases.push(Case {
            name,
            vars: vec![v(&mut rng, &[m, k], 1.0)?, w_in_out, w_out_in],
            run: Box::new(|x, stored_in_out| {
                if stored_in_out {
                    x[0].as_tensor().matmul(x[1].as_tensor())
                } else {
                    x[0].as_tensor().matmul(&x[2].as_tensor().t()?)
                }
            }),
        });
    }

    println!(
        "best-of-N microseconds, N = {iters} runs, {} rayon threads, f32",
        rayon::current_num_threads()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>8} {:>12} {:>12} {:>8}",
        "op", "fwd fused", "fwd ref", "speedup", "f+b fused", "f+b ref", "speedup"
    );
    for case in &cases {
        bench(case, iters, &mut rng)?;
    }
    Ok(())
}
