//! Tests of the fused kernels: each takes seeded random inputs (odd shapes, strided views) and
//! checks the fused forward and its gradients against the reference composition, in f32 and f64,
//! plus f64 finite differences for some ops and clear errors for bad inputs.

use super::reference;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A seeded random tensor of `dims` with entries in [-scale, scale).
fn rand_t(rng: &mut StdRng, dims: &[usize], scale: f64, dtype: DType) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)
}

/// Largest `|a - b| / (1 + |b|)` over all elements, so values near zero are compared absolutely.
fn max_rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f64::max))
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-12
    } else {
        1e-5
    }
}

/// Runs `fused` and `reference` on the same variables, then backpropagates
/// `sum(out * probe)` with the same random probe through both, and compares the outputs and the
/// gradients of every variable.
fn check_against_reference(
    name: &str,
    vars: &[Var],
    inputs: impl Fn(&[Var]) -> Result<Vec<Tensor>>,
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
    rng: &mut StdRng,
) -> Result<()> {
    let dtype = vars[0].dtype();
    let xs = inputs(vars)?;
    let out_f = fused(&xs)?;
    let out_r = reference(&xs)?;
    let err = max_rel_err(&out_f, &out_r)?;
    assert!(
        err < tol(dtype),
        "{name} {dtype:?}: forward differs by {err}"
    );
    let probe = rand_t(rng, out_r.dims(), 1.0, dtype)?;
    let g_f = (out_f * &probe)?.sum_all()?.backward()?;
    let g_r = (out_r * &probe)?.sum_all()?.backward()?;
    for (k, v) in vars.iter().enumerate() {
        let a = g_f
            .get(v)
            .unwrap_or_else(|| panic!("{name}: no fused grad for input {k}"));
        let b = g_r
            .get(v)
            .unwrap_or_else(|| panic!("{name}: no reference grad for input {k}"));
        let err = max_rel_err(a, b)?;
        assert!(
            err < tol(dtype) * 10.0,
            "{name} {dtype:?}: gradient of input {k} differs by {err}"
        );
    }
    Ok(())
}

fn var(rng: &mut StdRng, dims: &[usize], scale: f64, dtype: DType) -> Result<Var> {
    Var::from_tensor(&rand_t(rng, dims, scale, dtype)?)
}

const DTYPES: [DType; 2] = [DType::F32, DType::F64];

#[test]
fn rms_norm_matches_reference() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1);
    for dtype in DTYPES {
        // Contiguous, odd sizes, enough rows to take the parallel path.
        for dims in [vec![3, 5, 13], vec![7, 1], vec![257, 128]] {
            let h = *dims.last().unwrap();
            let vars = [
                var(&mut rng, &dims, 2.0, dtype)?,
                var(&mut rng, &[h], 1.5, dtype)?,
            ];
            check_against_reference(
                "rms_norm",
                &vars,
                |v| Ok(vec![v[0].as_tensor().clone(), v[1].as_tensor().clone()]),
                |x| super::rms_norm(&x[0], &x[1], 1e-6),
                |x| reference::rms_norm(&x[0], &x[1], 1e-6),
                &mut rng,
            )?;
        }
        // A transposed view (dense rows, strided leading dims) and a view whose last dimension
        // is strided (copied inside).
        let vars = [
            var(&mut rng, &[5, 3, 11], 2.0, dtype)?,
            var(&mut rng, &[11], 1.0, dtype)?,
        ];
        check_against_reference(
            "rms_norm transposed",
            &vars,
            |v| {
                Ok(vec![
                    v[0].as_tensor().transpose(0, 1)?,
                    v[1].as_tensor().clone(),
                ])
            },
            |x| super::rms_norm(&x[0], &x[1], 1e-5),
            |x| reference::rms_norm(&x[0], &x[1], 1e-5),
            &mut rng,
        )?;
    }
    Ok(())
}

#[test]
fn rms_norm_strided_last_dim_matches_reference() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(11);
    for dtype in DTYPES {
        // (6, 9) transposed is (9, 6) with stride (1, 9): the last dimension is not dense.
        let vars = [
            var(&mut rng, &[6, 9], 2.0, dtype)?,
            var(&mut rng, &[6], 1.0, dtype)?,
        ];
        check_against_reference(
            "rms_norm strided last dim",
            &vars,
            |v| Ok(vec![v[0].as_tensor().t()?, v[1].as_tensor().clone()]),
            |x| super::rms_norm(&x[0], &x[1], 1e-5),
            |x| reference::rms_norm(&x[0], &x[1], 1e-5),
            &mut rng,
        )?;
    }
    Ok(())
}

#[test]
fn softmax_matches_reference() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(2);
    for dtype in DTYPES {
        for dims in [vec![2, 3, 7], vec![1, 1], vec![4, 4, 23, 23]] {
            let vars = [var(&mut rng, &dims, 4.0, dtype)?];
            check_against_reference(
                "softmax",
                &vars,
                |v| Ok(vec![v[0].as_tensor().clone()]),
                |x| super::softmax_last_dim(&x[0]),
                |x| reference::softmax_last_dim(&x[0]),
                &mut rng,
            )?;
        }
        let vars = [var(&mut rng, &[3, 5, 9], 4.0, dtype)?];
        check_against_reference(
            "softmax transposed",
            &vars,
            |v| Ok(vec![v[0].as_tensor().transpose(1, 2)?]),
            |x| super::softmax_last_dim(&x[0]),
            |x| reference::softmax_last_dim(&x[0]),
            &mut rng,
        )?;
    }
    Ok(())
}

#[test]
fn softmax_of_masked_row_is_zero_not_nan() -> Result<()> {
    let x = Tensor::new(
        &[
            [f32::NEG_INFINITY, f32::NEG_INFINITY],
            [0.0, f32::NEG_INFINITY],
        ],
        &Device::Cpu,
    )?;
    let y = super::softmax_last_dim(&x)?.to_vec2::<f32>()?;
    assert_eq!(y, vec![vec![0.0, 0.0], vec![1.0, 0.0]]);
    Ok(())
}

/// cos and sin tables of `rows` positions for `head_dim`, as the models build them.
fn rope_tables(rows: usize, head_dim: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut c = Vec::new();
    let mut s = Vec::new();
    for p in 0..rows {
        for i in 0..half {
            let theta = p as f64 / 10000f64.powf(2.0 * i as f64 / head_dim as f64);
            c.push(theta.cos());
            s.push(theta.sin());
        }
    }
    let c = Tensor::from_vec(c, (rows, half), &Device::Cpu)?.to_dtype(dtype)?;
    let s = Tensor::from_vec(s, (rows, half), &Device::Cpu)?.to_dtype(dtype)?;
    Ok((c, s))
}

#[test]
fn rope_matches_reference() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    for dtype in DTYPES {
        // Tables longer than the sequence, as with a position offset: only the first rows count.
        let (cos, sin) = rope_tables(40, 6, dtype)?;
        let vars = [var(&mut rng, &[3, 2, 5, 6], 2.0, dtype)?];
        check_against_reference(
            "rope",
            &vars,
            |v| Ok(vec![v[0].as_tensor().clone()]),
            |x| super::rope(&x[0], &cos, &sin),
            |x| reference::rope(&x[0], &cos, &sin),
            &mut rng,
        )?;
        // The models' layout: (batch, seq, heads, head_dim) transposed to (batch, heads, seq, d),
        // with a narrowed table (a position offset) that is itself a strided view.
        let (cos, sin) = rope_tables(64, 32, dtype)?;
        let (cos, sin) = (cos.narrow(0, 3, 23)?, sin.narrow(0, 3, 23)?);
        let vars = [var(&mut rng, &[16, 23, 4, 32], 2.0, dtype)?];
        check_against_reference(
            "rope transposed",
            &vars,
            |v| Ok(vec![v[0].as_tensor().transpose(1, 2)?]),
            |x| super::rope(&x[0], &cos, &sin),
            |x| reference::rope(&x[0], &cos, &sin),
            &mut rng,
        )?;
    }
    Ok(())
}

#[test]
fn swiglu_matches_reference() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(4);
    for dtype in DTYPES {
        for dims in [vec![3, 7, 5], vec![1], vec![64, 23, 512]] {
            let vars = [
                var(&mut rng, &dims, 5.0, dtype)?,
                var(&mut rng, &dims, 2.0, dtype)?,
            ];
            check_against_reference(
                "swiglu",
                &vars,
                |v| Ok(vec![v[0].as_tensor().clone(), v[1].as_tensor().clone()]),
                |x| super::swiglu(&x[0], &x[1]),
                |x| reference::swiglu(&x[0], &x[1]),
                &mut rng,
            )?;
        }
        // Gate and up as two halves of one fused projection: narrowed, non-contiguous views.
        let vars = [var(&mut rng, &[4, 9, 22], 3.0, dtype)?];
        check_against_reference(
            "swiglu narrowed",
            &vars,
            |v| {
                let t = v[0].as_tensor();
                Ok(vec![t.narrow(2, 0, 11)?, t.narrow(2, 11, 11)?])
            },
            |x| super::swiglu(&x[0], &x[1]),
            |x| reference::swiglu(&x[0], &x[1]),
            &mut rng,
        )?;
    }
    Ok(())
}

fn targets(rng: &mut StdRng, dims: &[usize], vocab: usize) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

#[test]
fn log_softmax_gather_matches_reference() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    for dtype in DTYPES {
        for (b, s, v) in [(2, 3, 7), (1, 1, 1), (64, 23, 56), (3, 5, 1000)] {
            let t = targets(&mut rng, &[b, s], v)?;
            let vars = [var(&mut rng, &[b, s, v], 6.0, dtype)?];
            check_against_reference(
                "log_softmax_gather",
                &vars,
                |x| Ok(vec![x[0].as_tensor().clone()]),
                |x| super::log_softmax_gather(&x[0], &t),
                |x| reference::log_softmax_gather(&x[0], &t),
                &mut rng,
            )?;
        }
        // Logits of the completion positions only: a narrowed view along the sequence, with
        // i64 targets that are themselves a narrowed view.
        let t = targets(&mut rng, &[4, 12], 17)?.to_dtype(DType::I64)?;
        let t = t.narrow(1, 2, 9)?;
        let vars = [var(&mut rng, &[4, 12, 17], 6.0, dtype)?];
        check_against_reference(
            "log_softmax_gather narrowed",
            &vars,
            |x| Ok(vec![x[0].as_tensor().narrow(1, 1, 9)?]),
            |x| super::log_softmax_gather(&x[0], &t),
            |x| reference::log_softmax_gather(&x[0], &t),
            &mut rng,
        )?;
    }
    Ok(())
}

#[test]
fn bad_inputs_give_errors_not_panics() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(6);
    let logits = rand_t(&mut rng, &[2, 3, 5], 1.0, DType::F32)?;
    let t = Tensor::new(&[[0u32, 1, 5], [0, 0, 0]], &Device::Cpu)?;
    let err = super::log_softmax_gather(&logits, &t)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the vocabulary of 5"), "{err}");
    let t = Tensor::new(&[0u32, 1, 2], &Device::Cpu)?;
    let err = super::log_softmax_gather(&logits, &t)
        .unwrap_err()
        .to_string();
    assert!(err.contains("leading dimensions"), "{err}");

    let x = rand_t(&mut rng, &[4, 8], 1.0, DType::F32)?;
    let w = rand_t(&mut rng, &[7], 1.0, DType::F32)?;
    let err = super::rms_norm(&x, &w, 1e-6).unwrap_err().to_string();
    assert!(err.contains("weight must have shape (8)"), "{err}");

    let x = rand_t(&mut rng, &[2, 2, 3, 6], 1.0, DType::F32)?;
    let (cos, sin) = rope_tables(2, 6, DType::F32)?;
    let err = super::rope(&x, &cos, &sin).unwrap_err().to_string();
    assert!(err.contains("cos must be (>= 3, 3)"), "{err}");

    let a = rand_t(&mut rng, &[2, 3], 1.0, DType::F32)?;
    let b = rand_t(&mut rng, &[3, 2], 1.0, DType::F32)?;
    let err = super::swiglu(&a, &b).unwrap_err().to_string();
    assert!(err.contains("must have the same shape"), "{err}");
    Ok(())
}

/// Central finite differences in f64 of `sum(f(x) * probe)` against the autograd gradient of
/// the fused op, for every element of `x`.
fn finite_difference_check(
    name: &str,
    x: &Tensor,
    f: impl Fn(&Tensor) -> Result<Tensor>,
    rng: &mut StdRng,
) -> Result<()> {
    let v = Var::from_tensor(x)?;
    let out = f(v.as_tensor())?;
    let probe = rand_t(rng, out.dims(), 1.0, DType::F64)?;
    let loss = |t: &Tensor| -> Result<f64> { (f(t)? * &probe)?.sum_all()?.to_scalar::<f64>() };
    let grads = (out * &probe)?.sum_all()?.backward()?;
    let g = grads
        .get(&v)
        .expect("gradient of the input")
        .flatten_all()?
        .to_vec1::<f64>()?;
    let base = x.flatten_all()?.to_vec1::<f64>()?;
    let h = 1e-6;
    for (i, &gi) in g.iter().enumerate() {
        let mut plus = base.clone();
        plus[i] += h;
        let mut minus = base.clone();
        minus[i] -= h;
        let lp = loss(&Tensor::from_vec(plus, x.dims(), &Device::Cpu)?)?;
        let lm = loss(&Tensor::from_vec(minus, x.dims(), &Device::Cpu)?)?;
        let fd = (lp - lm) / (2.0 * h);
        assert!(
            (fd - gi).abs() < 1e-6 * (1.0 + fd.abs()),
            "{name}: element {i}: autograd {gi} vs finite difference {fd}"
        );
    }
    Ok(())
}

#[test]
fn finite_differences_agree_with_fused_backward() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let w = rand_t(&mut rng, &[5], 1.5, DType::F64)?;
    let x = rand_t(&mut rng, &[3, 5], 2.0, DType::F64)?;
    finite_difference_check("rms_norm x", &x, |x| super::rms_norm(x, &w, 1e-6), &mut rng)?;
    finite_difference_check(
        "rms_norm weight",
        &w,
        |w| super::rms_norm(&x, w, 1e-6),
        &mut rng,
    )?;

    let t = targets(&mut rng, &[2, 3], 6)?;
    let logits = rand_t(&mut rng, &[2, 3, 6], 3.0, DType::F64)?;
    finite_difference_check(
        "log_softmax_gather",
        &logits,
        |l| super::log_softmax_gather(l, &t),
        &mut rng,
    )?;

    let up = rand_t(&mut rng, &[2, 7], 2.0, DType::F64)?;
    let gate = rand_t(&mut rng, &[2, 7], 4.0, DType::F64)?;
    finite_difference_check("swiglu gate", &gate, |g| super::swiglu(g, &up), &mut rng)?;
    finite_difference_check("swiglu up", &up, |u| super::swiglu(&gate, u), &mut rng)?;

    let x = rand_t(&mut rng, &[2, 6], 3.0, DType::F64)?;
    finite_difference_check("softmax", &x, super::softmax_last_dim, &mut rng)?;

    let (cos, sin) = rope_tables(4, 4, DType::F64)?;
    let x = rand_t(&mut rng, &[1, 2, 3, 4], 2.0, DType::F64)?;
    finite_difference_check("rope", &x, |x| super::rope(x, &cos, &sin), &mut rng)?;
    Ok(())
}

#[test]
fn frozen_weight_gets_no_gradient_but_input_does() -> Result<()> {
    // A frozen model's norm weight is a plain tensor: the fused backward must skip its gradient
    // and still give the input's.
    let mut rng = StdRng::seed_from_u64(8);
    let x = var(&mut rng, &[4, 8], 1.0, DType::F32)?;
    let w = rand_t(&mut rng, &[8], 1.0, DType::F32)?;
    let grads = super::rms_norm(x.as_tensor(), &w, 1e-6)?
        .sum_all()?
        .backward()?;
    assert!(grads.get(&w).is_none());
    let gx = grads.get(&x).expect("input gradient");
    assert!(gx.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
    Ok(())
}

#[test]
fn fast_exp_is_accurate_over_the_whole_range() {
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x < 88.0 {
        let got = super::kernels::exp_f32(x) as f64;
        let want = (x as f64).exp();
        worst = worst.max((got - want).abs() / want);
        x += 0.001_3;
    }
    assert!(worst < 3e-7, "relative error {worst}");
    assert_eq!(super::kernels::exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(super::kernels::exp_f32(-100.0), 0.0);
    assert_eq!(super::kernels::exp_f32(0.0), 1.0);
    assert!(super::kernels::exp_f32(f32::NAN).is_nan());
}

/// An additive causal mask (batch, 1, tq, tk) for queries at the last `tq` of `tk` positions,
/// with the first `pad[b]` keys of each batch row masked too (left padding).
fn causal_mask(tq: usize, tk: usize, pad: &[usize], dtype: DType) -> Result<Tensor> {
    let mut m = Vec::new();
    for &p in pad {
        for i in 0..tq {
            for j in 0..tk {
                let visible = j <= i + (tk - tq) && j >= p;
                m.push(if visible { 0.0 } else { f64::NEG_INFINITY });
            }
        }
    }
    Tensor::from_vec(m, (pad.len(), 1, tq, tk), &Device::Cpu)?.to_dtype(dtype)
}

#[test]
fn attention_matches_reference() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(9);
    for dtype in DTYPES {
        // Grouped-query attention with a causal, left-padded mask (no fully masked row).
        let mask = causal_mask(5, 5, &[0, 2, 1], dtype)?;
        let vars = [
            var(&mut rng, &[3, 4, 5, 6], 1.5, dtype)?,
            var(&mut rng, &[3, 2, 5, 6], 1.5, dtype)?,
            var(&mut rng, &[3, 2, 5, 6], 1.5, dtype)?,
        ];
        let inputs = |v: &[Var]| Ok(v.iter().map(|v| v.as_tensor().clone()).collect());
        check_against_reference(
            "attention gqa causal",
            &vars,
            inputs,
            |x| super::attention(&x[0], &x[1], &x[2], Some(&mask), 0.4),
            |x| reference::attention(&x[0], &x[1], &x[2], Some(&mask), 0.4),
            &mut rng,
        )?;
        // No mask, one kv head per query head, the fixture's per-layer shape (parallel path).
        let vars = [
            var(&mut rng, &[16, 4, 23, 32], 1.0, dtype)?,
            var(&mut rng, &[16, 4, 23, 32], 1.0, dtype)?,
            var(&mut rng, &[16, 4, 23, 32], 1.0, dtype)?,
        ];
        check_against_reference(
            "attention unmasked",
            &vars,
            inputs,
            |x| super::attention(&x[0], &x[1], &x[2], None, 0.18),
            |x| reference::attention(&x[0], &x[1], &x[2], None, 0.18),
            &mut rng,
        )?;
        // The models' layout: q, k, v as transposed views of (batch, seq, heads, d), and a
        // mask shared by all batch rows (1, 1, tq, tk).
        let mask = causal_mask(7, 7, &[0], dtype)?;
        let vars = [
            var(&mut rng, &[2, 7, 6, 8], 1.5, dtype)?,
            var(&mut rng, &[2, 7, 3, 8], 1.5, dtype)?,
            var(&mut rng, &[2, 7, 3, 8], 1.5, dtype)?,
        ];
        check_against_reference(
            "attention transposed views",
            &vars,
            |v| {
                v.iter()
                    .map(|v| v.as_tensor().transpose(1, 2))
                    .collect::<Result<Vec<_>>>()
            },
            |x| super::attention(&x[0], &x[1], &x[2], Some(&mask), 0.35),
            // candle's matmul rejects these strides, so the reference gets contiguous k and v.
            |x| {
                let (k, v) = (x[1].contiguous()?, x[2].contiguous()?);
                reference::attention(&x[0], &k, &v, Some(&mask), 0.35)
            },
            &mut rng,
        )?;
        // A decode step: one query against a narrowed view of a longer key/value cache.
        let mask = causal_mask(1, 4, &[1, 0], dtype)?;
        let vars = [
            var(&mut rng, &[2, 4, 1, 8], 1.5, dtype)?,
            var(&mut rng, &[2, 2, 9, 8], 1.5, dtype)?,
            var(&mut rng, &[2, 2, 9, 8], 1.5, dtype)?,
        ];
        check_against_reference(
            "attention decode",
            &vars,
            |v| {
                Ok(vec![
                    v[0].as_tensor().clone(),
                    v[1].as_tensor().narrow(2, 0, 4)?,
                    v[2].as_tensor().narrow(2, 0, 4)?,
                ])
            },
            |x| super::attention(&x[0], &x[1], &x[2], Some(&mask), 0.35),
            |x| reference::attention(&x[0], &x[1], &x[2], Some(&mask), 0.35),
            &mut rng,
        )?;
    }
    Ok(())
}

#[test]
fn attention_finite_differences() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(10);
    let mask = causal_mask(3, 4, &[0, 1], DType::F64)?;
    let q = rand_t(&mut rng, &[2, 2, 3, 4], 1.5, DType::F64)?;
    let k = rand_t(&mut rng, &[2, 1, 4, 4], 1.5, DType::F64)?;
    let v = rand_t(&mut rng, &[2, 1, 4, 4], 1.5, DType::F64)?;
    let m = Some(&mask);
    finite_difference_check(
        "attention q",
        &q,
        |q| super::attention(q, &k, &v, m, 0.5),
        &mut rng,
    )?;
    finite_difference_check(
        "attention k",
        &k,
        |k| super::attention(&q, k, &v, m, 0.5),
        &mut rng,
    )?;
    finite_difference_check(
        "attention v",
        &v,
        |v| super::attention(&q, &k, v, m, 0.5),
        &mut rng,
    )?;
    Ok(())
}

#[test]
fn attention_bad_shapes_give_errors() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(12);
    let q = rand_t(&mut rng, &[2, 3, 4, 8], 1.0, DType::F32)?;
    let k = rand_t(&mut rng, &[2, 2, 4, 8], 1.0, DType::F32)?;
    let err = super::attention(&q, &k, &k, None, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("kv_heads dividing heads"), "{err}");
    let k = rand_t(&mut rng, &[2, 3, 4, 8], 1.0, DType::F32)?;
    let v = rand_t(&mut rng, &[2, 3, 5, 8], 1.0, DType::F32)?;
    let err = super::attention(&q, &k, &v, None, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must have the shape of k"), "{err}");
    Ok(())
}
