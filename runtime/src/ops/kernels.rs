//! The CPU kernels, one of each: takes plain slices (a row, a head, a whole buffer), gives the
//! values of RMSNorm, RoPE, SwiGLU, softmax and log-sum-exp and their backward passes, the dot
//! products and sums they are built from, and [`mm`], the one safe wrapper of the gemm crate.
//! Three callers share them, so the three paths compute the same numbers the same way: the
//! candle custom ops of `ops` (through `ops::cpu`, which turns storages into rows and runs rows
//! in parallel), the hand-written training pass `model::fast`, and the host decoder
//! `generate::host`. Nothing here allocates or spawns work; callers choose the parallelism.

use candle_core::WithDType;

/// The element types the fused kernels compute in: f32 for speed, f64 so that finite-difference
/// tests can run through the same code.
pub(crate) trait Real: WithDType + num_traits::Float {
    /// `e^self`, through a branch-free polynomial for f32 so that loops over rows vectorise
    /// (libm's `expf` is a call per element); f64 keeps the exact libm `exp`.
    fn fexp(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn fexp(self) -> f32 {
        exp_f32(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn fexp(self) -> f64 {
        self.exp()
    }
}

/// `e^x` for f32 within about 2 ulp (the Cephes `expf` polynomial), written without branches or
/// calls so the compiler vectorises loops around it. Inputs below -87.3 give 0 (instead of
/// subnormals) and inputs above 88 saturate near `e^88`; `-inf` gives 0 and NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding it rounds to the nearest integer without a rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let underflow = x < -87.3;
    let xc = x.clamp(-87.3, 88.0);
    let kr = xc * LOG2E + ROUND;
    let k = kr - ROUND;
    let r = xc - k * 0.693_359_4 + k * 2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * z + r + 1.0;
    // `kr`'s low mantissa bits hold k (ROUND's bits are 0x4B40_0000), so 2^k is built with
    // integer arithmetic only; a float-to-int cast would keep the loop from vectorising.
    let scale = f32::from_bits(
        kr.to_bits()
            .wrapping_sub(0x4B40_0000)
            .wrapping_add(127)
            .wrapping_shl(23),
    );
    let v = e * scale;
    if underflow {
        0.0
    } else {
        v
    }
}

/// `sum(e^(x - shift))` over a slice, with eight independent accumulators so it vectorises.
#[inline(always)]
pub(crate) fn sum_exp_shifted<T: Real>(x: &[T], shift: T) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += (c[k] - shift).fexp();
        }
    }
    let mut s = T::zero();
    for &r in rest {
        s += (r - shift).fexp();
    }
    for a in acc {
        s += a;
    }
    s
}

/// Maximum of a slice (`-inf` for an empty one), with eight independent lanes.
#[inline(always)]
pub(crate) fn max<T: Real>(x: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    let mut m = T::neg_infinity();
    for &r in rest.iter().chain(acc.iter()) {
        if r > m {
            m = r;
        }
    }
    m
}

/// Dot product of two slices with eight independent accumulators (see [`sum`]).
#[inline(always)]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = T::zero();
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    for a in acc {
        s += a;
    }
    s
}

/// Sum of a slice with eight independent accumulators, so the additions vectorise (a single
/// running sum is a serial dependency chain the compiler may not reorder).
#[inline(always)]
pub(crate) fn sum<T: Real>(v: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    let mut s = T::zero();
    for r in rest {
        s += *r;
    }
    for a in acc {
        s += a;
    }
    s
}

/// `dst[j] += a * x[j]` over a row, written so it vectorises.
#[inline(always)]
pub(crate) fn axpy<T: Real>(dst: &mut [T], a: T, x: &[T]) {
    for (d, &x) in dst.iter_mut().zip(x) {
        *d += a * x;
    }
}

/// `sum(a * b * c)` over three slices, with the eight independent accumulators of [`dot`].
#[inline(always)]
fn dot3<T: Real>(a: &[T], b: &[T], c: &[T]) -> T {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [T::zero(); 8];
    let (ca, cb, cc) = (a.chunks_exact(8), b.chunks_exact(8), c.chunks_exact(8));
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k] * z[k];
        }
    }
    let mut s = T::zero();
    for ((x, y), z) in ra.iter().zip(rb).zip(rc) {
        s += *x * *y * *z;
    }
    for a in acc {
        s += a;
    }
    s
}

/// `max + ln(sum(e^(x - max)))` of a row: the log-sum-exp that log-softmax subtracts.
#[inline]
pub(crate) fn log_sum_exp<T: Real>(x: &[T]) -> T {
    let max = max(x);
    max + sum_exp_shifted(x, max).ln()
}

/// The inverse RMS `1 / sqrt(mean(x^2) + eps)` of one row.
#[inline]
pub(crate) fn inv_rms<T: Real>(x: &[T], eps: T) -> T {
    let n = T::from_f64(x.len() as f64);
    (dot(x, x) / n + eps).sqrt().recip()
}

/// RMSNorm of one row: writes `x / sqrt(mean(x^2) + eps) * w` into `out` and gives the row's
/// [`inv_rms`], which the backward reads.
#[inline]
pub(crate) fn rms_norm<T: Real>(x: &[T], w: &[T], eps: T, out: &mut [T]) -> T {
    let r = inv_rms(x, eps);
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
        *o = x * r * w;
    }
    r
}

/// Backward of one row of [`rms_norm`] given its inverse RMS `r` and the output gradient `dy`:
/// adds the gradient of `x` into `dx` and, when given, that of `w` into `dw`. With
/// `c = r^3 / n * sum(dy * w * x)`: `dx_j = r * dy_j * w_j - c * x_j`, `dw_j = dy_j * x_j * r`.
#[inline]
pub(crate) fn rms_norm_backward<T: Real>(
    x: &[T],
    w: &[T],
    r: T,
    dy: &[T],
    dx: &mut [T],
    dw: Option<&mut [T]>,
) {
    let n = T::from_f64(x.len() as f64);
    let c = r * r * r * dot3(dy, w, x) / n;
    for (((d, &g), &w), &x) in dx.iter_mut().zip(dy).zip(w).zip(x) {
        *d += r * g * w - c * x;
    }
    if let Some(dw) = dw {
        for ((d, &g), &x) in dw.iter_mut().zip(dy).zip(x) {
            *d += g * x * r;
        }
    }
}

/// Rotary position embedding of one head in place (non-interleaved, HF "rotate_half" layout):
/// the halves `(a, b)` of `head` become `(a cos - b sin, b cos + a sin)` for the angles whose
/// cosines and sines are `cos` and `sin` (head_dim / 2 each). `inverse` rotates by the opposite
/// angles, which is the backward of the rotation.
#[inline]
pub(crate) fn rope<T: Real>(head: &mut [T], cos: &[T], sin: &[T], inverse: bool) {
    let half = head.len() / 2;
    let sign = if inverse { -T::one() } else { T::one() };
    let (x1, x2) = head.split_at_mut(half);
    // Zipped iterators rather than indices, so there are no bounds checks to keep the loop from
    // vectorising.
    for (((a, b), &c), &s) in x1.iter_mut().zip(x2.iter_mut()).zip(cos).zip(sin) {
        let s = s * sign;
        let (va, vb) = (*a, *b);
        *a = va * c - vb * s;
        *b = vb * c + va * s;
    }
}

/// Softmax of a row in place; a row of all `-inf` gives zeros rather than NaN, so that fully
/// masked rows do not poison a whole batch.
#[inline(always)]
pub(crate) fn softmax<T: Real>(row: &mut [T]) {
    let max = max(row);
    if max == T::neg_infinity() {
        row.fill(T::zero());
        return;
    }
    for v in row.iter_mut() {
        *v = (*v - max).fexp();
    }
    let inv = sum(row).recip();
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Backward of one row of [`softmax`] in place: `dy` (the output gradient) becomes the gradient
/// of the input, `y * (dy - sum(dy * y))`, given the output `y`.
#[inline(always)]
pub(crate) fn softmax_backward<T: Real>(dy: &mut [T], y: &[T]) {
    let dot = dot(dy, y);
    for (d, &y) in dy.iter_mut().zip(y) {
        *d = y * (*d - dot);
    }
}

#[inline(always)]
fn sigmoid<T: Real>(x: T) -> T {
    (T::one() + (-x).fexp()).recip()
}

/// Calls `$generic($args)`, through `$avx2` (the same code compiled for AVX2) when the CPU has
/// it: the crate is built for baseline x86-64 (4-wide SSE2), and the loops that take this are
/// the largest outside gemm, where the wider vectors pay.
macro_rules! multiversion {
    ($generic:ident, $avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::ops::kernels::has_avx2() {
                // SAFETY: the CPU supports the features `$avx2` is compiled for.
                unsafe { $avx2($($arg),*) }
            } else {
                $generic($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $generic($($arg),*)
        }
    }};
}
pub(crate) use multiversion;

/// SwiGLU, element by element: `act = silu(gate) * up`.
pub(crate) fn swiglu<T: Real>(gate: &[T], up: &[T], act: &mut [T]) {
    #[inline(always)]
    fn body<T: Real>(gate: &[T], up: &[T], act: &mut [T]) {
        for ((a, &g), &u) in act.iter_mut().zip(gate).zip(up) {
            *a = g * sigmoid(g) * u;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2<T: Real>(gate: &[T], up: &[T], act: &mut [T]) {
        body(gate, up, act)
    }
    multiversion!(body, avx2, gate, up, act)
}

/// Backward of [`swiglu`] given the output gradient `dact`: writes the gradients of `gate` and
/// `up`, with `d silu(g) / dg = sig * (1 + g * (1 - sig))` and `sig = sigmoid(g)`.
pub(crate) fn swiglu_backward<T: Real>(
    dact: &[T],
    gate: &[T],
    up: &[T],
    dgate: &mut [T],
    dup: &mut [T],
) {
    #[inline(always)]
    fn body<T: Real>(dact: &[T], gate: &[T], up: &[T], dgate: &mut [T], dup: &mut [T]) {
        for ((((dg, du), &da), &g), &u) in dgate
            .iter_mut()
            .zip(dup.iter_mut())
            .zip(dact)
            .zip(gate)
            .zip(up)
        {
            let sg = sigmoid(g);
            let silu = g * sg;
            *du = da * silu;
            *dg = da * u * (sg + silu * (T::one() - sg));
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2<T: Real>(dact: &[T], gate: &[T], up: &[T], dgate: &mut [T], dup: &mut [T]) {
        body(dact, gate, up, dgate, dup)
    }
    multiversion!(body, avx2, dact, gate, up, dgate, dup)
}

/// True when the CPU has AVX2, checked once (the result is cached by the standard library).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Weight rows per task of [`rows_by_weight`]: 64 rows of a 576-wide model are 147 KB, a few
/// dozen tasks per multiply of a 135M model.
const WEIGHT_ROWS_PER_TASK: usize = 64;

/// `out (m, n) = [out +] x (m, k) . w^T` for a few rows `x` and the row-major (n, k) weight `w`,
/// with `out`'s rows `ldo` apart: the decode step of a model whose weights outgrow the cache.
/// Every weight row is read once and dotted with each row of `x` (which stays in the
/// first-level cache), so a step streams the weights instead of copying them transposed (what
/// gemm needs to be fast) or having gemm repack them at every call; for up to eight rows this
/// measured faster than gemm on a transposed copy (docs/performance.md). With `parallel` the
/// weight rows are split between rayon's threads. Panics if a slice is shorter than its shape
/// implies.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_by_weight(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: &mut [f32],
    ldo: usize,
    accumulate: bool,
    parallel: bool,
) {
    use rayon::prelude::*;
    assert!(
        x.len() >= m * k && w.len() >= n * k && (m == 0 || out.len() >= (m - 1) * ldo + n),
        "rows_by_weight: an operand is shorter than its shape implies"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                out[r * ldo..r * ldo + n].fill(0.0);
            }
        }
        return;
    }
    let x = &x[..m * k];
    let w = &w[..n * k];
    // The products are laid out weight row by weight row (out transposed) so that each task
    // writes one contiguous run without a Vec of its own; one loop then scatters them into
    // `out`'s rows.
    let mut products = vec![0f32; n * m];
    let (span, run) = (WEIGHT_ROWS_PER_TASK * k, WEIGHT_ROWS_PER_TASK * m);
    if parallel {
        w.par_chunks(span)
            .zip(products.par_chunks_mut(run))
            .for_each(|(wb, p)| dots(x, m, k, wb, p));
    } else {
        for (wb, p) in w.chunks(span).zip(products.chunks_mut(run)) {
            dots(x, m, k, wb, p);
        }
    }
    for (col, row) in products.chunks_exact(m).enumerate() {
        for (r, &d) in row.iter().enumerate() {
            let o = &mut out[r * ldo + col];
            *o = if accumulate { *o + d } else { d };
        }
    }
}

/// The dot products of every row of `wb` (rows of length `k`) with every row of `x` (m, k),
/// into `out` weight row by weight row.
fn dots(x: &[f32], m: usize, k: usize, wb: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features `dots_fma` is compiled for.
        unsafe { dots_fma(x, m, k, wb, out) };
        return;
    }
    for (wrow, o) in wb.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
        for (xrow, o) in x.chunks_exact(k).zip(o.iter_mut()) {
            *o = dot(wrow, xrow);
        }
    }
}

/// [`dots`] with eight rows of `x` at a time, each with its own vector of partial sums, so that
/// the fused multiply-adds of the eight rows overlap and each load of the weight row serves all
/// of them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_fma(x: &[f32], m: usize, k: usize, wb: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const ROWS: usize = 8;
    let full = k / 8 * 8;
    assert!(x.len() >= m * k && wb.len().is_multiple_of(k) && out.len() >= wb.len() / k * m);
    for (wrow, o) in wb.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
        let mut r = 0;
        while r + ROWS <= m {
            let mut acc = [_mm256_setzero_ps(); ROWS];
            let mut i = 0;
            while i < full {
                // SAFETY: i + 8 <= full <= k, so the loads stay inside the weight row and inside
                // rows r .. r + 8 of x, which holds m * k values (asserted above).
                let wv = _mm256_loadu_ps(wrow.as_ptr().add(i));
                for (q, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(x.as_ptr().add((r + q) * k + i));
                    *a = _mm256_fmadd_ps(wv, xv, *a);
                }
                i += 8;
            }
            for (q, a) in acc.iter().enumerate() {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
                let xr = &x[(r + q) * k..(r + q + 1) * k];
                let mut s = 0f32;
                for i in full..k {
                    s += wrow[i] * xr[i];
                }
                o[r + q] = s + sum(&lanes);
            }
            r += ROWS;
        }
        for (q, o) in o.iter_mut().enumerate().skip(r) {
            *o = dot(wrow, &x[q * k..(q + 1) * k]);
        }
    }
}

/// `dst (m, n) = [dst +] beta * a (m, k) . b (k, n)` on f32 host buffers, every operand
/// addressed by its (row stride, column stride) from the start of its slice: the one safe
/// wrapper of the gemm crate (which candle's CPU matmul also uses) for the host paths, the
/// training pass (`model::fast`) and the decoder (`generate::host`). Panics if a slice is
/// shorter than its shape and strides imply, which only an internal bug can cause.
///
/// [`mm`] lets gemm choose: it may split a large product into jobs on rayon's pool. When the
/// step's chunks already keep every core busy (one chunk per core), those jobs run on the calling thread, which costs
/// little; when a single chunk runs (a large model on a few rows, or a user's `micro_batch`),
/// the idle cores take them, so one chunk still uses the whole machine.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm(
    shape: (usize, usize, usize),
    dst: &mut [f32],
    dst_strides: (usize, usize),
    accumulate: bool,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    beta: f32,
) {
    let par = match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    };
    mm_with(
        shape,
        dst,
        dst_strides,
        accumulate,
        a,
        a_strides,
        b,
        b_strides,
        beta,
        par,
    )
}

/// [`mm`] with the caller's choice of parallelism (the decoder runs one part per core itself).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm_with(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (d_rs, d_cs): (usize, usize),
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    beta: f32,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The furthest element an (r, c) operand with these strides touches, plus one.
    let reach = |r: usize, c: usize, rs: usize, cs: usize| {
        if r == 0 || c == 0 {
            0
        } else {
            (r - 1) * rs + (c - 1) * cs + 1
        }
    };
    assert!(
        dst.len() >= reach(m, n, d_rs, d_cs)
            && a.len() >= reach(m, k, a_rs, a_cs)
            && b.len() >= reach(k, n, b_rs, b_cs),
        "fast path: a matrix operand is shorter than its shape and strides imply"
    );
    let s = |v: usize| v as isize;
    // SAFETY: the assert above keeps every element gemm reads or writes inside the three
    // slices (gemm's strides are (column, row), and it touches exactly the elements
    // `row * rs + col * cs` for rows and columns inside the shapes). `dst` is borrowed mutably,
    // so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            s(d_cs),
            s(d_rs),
            accumulate,
            a.as_ptr(),
            s(a_cs),
            s(a_rs),
            b.as_ptr(),
            s(b_cs),
            s(b_rs),
            1.0f32,
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rows_by_weight` against the product written out, for shapes off every block size (eight
    /// rows with a tail of k, a remainder of rows, more weight rows than one task), with and
    /// without accumulation, a row stride wider than the output, and both thread settings.
    #[test]
    fn rows_by_weight_is_the_product_with_the_transposed_weight() {
        let val = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 250.0;
        for (m, k, n) in [
            (1, 5, 3),
            (3, 17, 70),
            (11, 19, 66),
            (8, 64, 130),
            (2, 0, 4),
        ] {
            let x: Vec<f32> = (0..m * k).map(val).collect();
            let w: Vec<f32> = (0..n * k).map(|i| val(i + 13)).collect();
            let ldo = n + 3;
            for accumulate in [false, true] {
                for parallel in [false, true] {
                    let start: Vec<f32> = (0..m * ldo).map(|i| val(i + 7)).collect();
                    let mut out = start.clone();
                    rows_by_weight(&x, m, k, &w, n, &mut out, ldo, accumulate, parallel);
                    for r in 0..m {
                        for o in 0..ldo {
                            let got = out[r * ldo + o];
                            if o >= n {
                                assert_eq!(got, start[r * ldo + o], "column {o} is outside");
                                continue;
                            }
                            let mut want: f64 = (0..k)
                                .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                                .sum();
                            if accumulate {
                                want += start[r * ldo + o] as f64;
                            }
                            assert!(
                                (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "m {m} k {k} n {n} acc {accumulate}: ({r}, {o}) {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
