//! The CUDA forwards of the fused ops: launchers of the kernels of `runtime/kernels/recap.cu`
//! (compiled to PTX by the build script) on candle's CUDA device, for f32 and bf16 storages. The
//! candle custom ops of the sibling modules (`rms_norm`, `rope`, ...) call them from their
//! `cuda_fwd`, so an op and its backward wiring are written once for both devices. Each
//! launcher takes the storages and layouts candle hands a `cuda_fwd` and gives the output in
//! the shape the CPU kernel gives (the backward ops pack several gradients into one tensor the
//! same way), with the same values up to rounding; like the CPU kernels, a softmax row that is
//! entirely `-inf` gives zeros.
//!
//! Every input must be contiguous (the dispatch in [`super`] and [`super::cpu::dense_last`]
//! make it so on CUDA), so each kernel indexes plain row-major buffers. Attention is cuBLAS
//! batched matmuls (candle's) around one fused kernel for `softmax(scale * scores + mask)`; its
//! backward recomputes the probabilities rather than keeping them from the forward.

use super::launch::{self, per_elem, per_row, Geometry};
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{kernel_name, CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{
    bail, CudaDevice, CudaStorage, Layout, Result, Shape, Storage, Tensor, WithDType,
};

/// The PTX of `kernels/recap.cu`, loaded once per device under the module name [`MODULE`].
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/recap.ptx"));
const MODULE: &str = "recap";

/// Calls `$f` with the typed device slice of `$s` (f32 or bf16) as `$x`, and wraps the slice
/// it gives back as a storage of the same dtype.
macro_rules! typed {
    ($s:expr, $what:expr, |$x:ident| $f:expr) => {{
        let s: &CudaStorage = $s;
        let slice = match &s.slice {
            CudaStorageSlice::F32($x) => CudaStorageSlice::F32($f),
            CudaStorageSlice::BF16($x) => CudaStorageSlice::BF16($f),
            _ => bail!(
                "{}: the CUDA kernels take f32 or bf16, got {:?}",
                $what,
                s.dtype()
            ),
        };
        CudaStorage {
            slice,
            device: s.device().clone(),
        }
    }};
}

/// The part of `s` that a contiguous layout covers, as a typed device view.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => bail!("{what}: the CUDA kernel needs a contiguous tensor"),
    }
}

/// The same for a slice that is this op's own input `x`.
fn own<'a, T>(x: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(x.slice(a..b)),
        None => bail!("{what}: the CUDA kernel needs a contiguous tensor"),
    }
}

/// Number of rows and row length of a tensor viewed as rows of its last dimension.
fn rows_of(l: &Layout, what: &str) -> Result<(usize, usize)> {
    match l.dims().last() {
        Some(&n) => Ok((l.shape().elem_count() / n.max(1), n)),
        None => bail!("{what}: expected at least one dimension, got a scalar"),
    }
}

/// The driver's launch configuration of a [`Geometry`] (no dynamic shared memory: the
/// kernels' shared arrays are static).
fn config(g: Geometry) -> LaunchConfig {
    LaunchConfig {
        grid_dim: g.grid,
        block_dim: g.block,
        shared_mem_bytes: 0,
    }
}

/// The kernel `$name` for element type `$t` (candle's naming: `rms_norm_fwd_bf16`), loading
/// the module on first use. A macro because candle does not export the function's type.
macro_rules! kernel {
    ($dev:expr, $t:ty, $name:expr) => {
        $dev.get_or_load_custom_func(&kernel_name::<$t>($name), MODULE, PTX)?
    };
}

/// Sizes that the kernels take as `int` must fit one.
fn int(v: usize, what: &str) -> Result<i32> {
    match i32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("{what}: {v} is too large for the CUDA kernels"),
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm.

fn check_weight(l: &Layout, wl: &Layout, n: usize) -> Result<()> {
    if wl.dims() != [n] {
        bail!(
            "rms_norm: weight must have shape ({n}) for input {:?}, got {:?}",
            l.dims(),
            wl.dims()
        );
    }
    Ok(())
}

fn rms_norm_fwd<T: CudaDType + WithDType + DeviceRepr>(
    x: &CudaSlice<T>,
    l: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    eps: f64,
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    let (rows, n) = rows_of(l, "rms_norm")?;
    check_weight(l, wl, n)?;
    let (x, w) = (own(x, l, "rms_norm")?, view::<T>(w, wl, "rms_norm weight")?);
    // SAFETY: the kernel writes every element.
    let mut out = unsafe { dev.alloc::<T>(rows * n)? };
    if rows * n > 0 {
        let (n32, eps) = (int(n, "rms_norm")?, eps as f32);
        let f = kernel!(dev, T, "rms_norm_fwd");
        let mut b = f.builder();
        b.arg(&x).arg(&w).arg(&mut out).arg(&n32).arg(&eps);
        // SAFETY: the argument list matches the kernel's signature; each buffer holds rows * n
        // (or n, the weight) elements of T.
        unsafe { b.launch(config(per_row(rows, n))) }.w()?;
    }
    Ok(out)
}

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension of `x`.
pub(crate) fn rms_norm(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let out = typed!(s1, "rms_norm", |x| rms_norm_fwd(x, l1, s2, l2, eps, dev)?);
    Ok((out, l1.shape().clone()))
}

// The backward takes every input and both flags of the op.
#[allow(clippy::too_many_arguments)]
fn rms_norm_bwd<T: CudaDType + WithDType + DeviceRepr>(
    x: &CudaSlice<T>,
    l: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    (eps, want_dw): (f64, bool),
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    let (rows, n) = rows_of(l, "rms_norm backward")?;
    check_weight(l, wl, n)?;
    if gl.dims() != l.dims() {
        bail!(
            "rms_norm backward: gradient shape {:?} differs from input shape {:?}",
            gl.dims(),
            l.dims()
        );
    }
    let x = own(x, l, "rms_norm backward")?;
    let w = view::<T>(w, wl, "rms_norm weight")?;
    let g = view::<T>(g, gl, "rms_norm output gradient")?;
    let out_rows = rows + usize::from(want_dw);
    // SAFETY: the kernels write every element (the weight row only when it exists).
    let mut out = unsafe { dev.alloc::<T>(out_rows * n)? };
    if n == 0 {
        return Ok(out);
    }
    let (n32, rows32, eps) = (int(n, "rms_norm")?, int(rows, "rms_norm")?, eps as f32);
    // SAFETY: written by the first kernel, one value per row, before the second reads it.
    let mut rs = unsafe { dev.alloc::<f32>(rows.max(1))? };
    if rows > 0 {
        let mut dx = out.slice_mut(0..rows * n);
        let f = kernel!(dev, T, "rms_norm_bwd");
        let mut b = f.builder();
        b.arg(&x)
            .arg(&w)
            .arg(&g)
            .arg(&mut dx)
            .arg(&mut rs)
            .arg(&n32)
            .arg(&eps);
        // SAFETY: the arguments match the kernel's signature; `dx` and `g` hold rows * n
        // elements, `rs` one per row.
        unsafe { b.launch(config(per_row(rows, n))) }.w()?;
    }
    if want_dw {
        let mut acc = dev.alloc_zeros::<f32>(n)?;
        if rows > 0 {
            // Each thread sums `chunk` rows of one column.
            let (geometry, chunk) = launch::rms_norm_dw(rows, n);
            let chunk32 = int(chunk, "rms_norm")?;
            let f = kernel!(dev, T, "rms_norm_dw");
            let mut b = f.builder();
            b.arg(&x)
                .arg(&g)
                .arg(&rs)
                .arg(&mut acc)
                .arg(&rows32)
                .arg(&n32)
                .arg(&chunk32);
            // SAFETY: the arguments match the kernel's signature; `acc` holds n zeroed floats.
            unsafe { b.launch(config(geometry)) }.w()?;
        }
        // With no rows the weight gradient is the zeroed accumulator.
        let mut dw = out.slice_mut(rows * n..);
        let f = kernel!(dev, T, "cast_from_f32");
        let mut b = f.builder();
        b.arg(&acc).arg(&mut dw).arg(&n32);
        // SAFETY: `acc` and `dw` both hold n elements.
        unsafe { b.launch(config(per_elem(n))) }.w()?;
    }
    Ok(out)
}

/// The backward of [`rms_norm`] from `x`, the weight and the output gradient: the gradient of
/// `x` in the first rows of a (rows, n) matrix and, when `want_dw`, that of the weight in one
/// more row (the CPU op's layout).
pub(crate) fn rms_norm_backward(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
    eps: f64,
    want_dw: bool,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let (rows, n) = rows_of(l1, "rms_norm backward")?;
    let out = typed!(s1, "rms_norm backward", |x| rms_norm_bwd(
        x,
        l1,
        s2,
        l2,
        s3,
        l3,
        (eps, want_dw),
        dev
    )?);
    Ok((out, Shape::from((rows + usize::from(want_dw), n))))
}

// ---------------------------------------------------------------------------------------------
// RoPE.

fn rope_fwd<T: CudaDType + WithDType + DeviceRepr>(
    x: &CudaSlice<T>,
    l: &Layout,
    (cs, cl): (&CudaStorage, &Layout),
    (ss, sl): (&CudaStorage, &Layout),
    inverse: bool,
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    let (_, _, seq, d) = match l.dims() {
        &[b, h, s, d] => (b, h, s, d),
        dims => bail!("rope: input must be (batch, heads, seq, head_dim), got {dims:?}"),
    };
    if d % 2 != 0 {
        bail!("rope: head_dim must be even, got {d}");
    }
    let half = d / 2;
    for (name, cl) in [("cos", cl), ("sin", sl)] {
        if !matches!(cl.dims(), &[s, h] if s >= seq && h == half) {
            bail!(
                "rope: {name} must be (>= {seq}, {half}) for input {:?}, got {:?}",
                l.dims(),
                cl.dims()
            );
        }
    }
    let x = own(x, l, "rope")?;
    let cos = view::<T>(cs, cl, "rope cos")?;
    let sin = view::<T>(ss, sl, "rope sin")?;
    let len = l.shape().elem_count();
    // SAFETY: the kernel writes both elements of every pair, which is every element.
    let mut out = unsafe { dev.alloc::<T>(len)? };
    if len > 0 {
        let pairs = len / 2;
        let (seq32, half32) = (int(seq, "rope")?, int(half, "rope")?);
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        let f = kernel!(dev, T, "rope");
        let mut b = f.builder();
        b.arg(&x)
            .arg(&cos)
            .arg(&sin)
            .arg(&mut out)
            .arg(&pairs)
            .arg(&seq32)
            .arg(&half32)
            .arg(&sign);
        // SAFETY: the arguments match the kernel's signature; `cos` and `sin` hold at least
        // seq * half elements, `x` and `out` 2 * pairs.
        unsafe { b.launch(config(per_elem(pairs))) }.w()?;
    }
    Ok(out)
}

/// Rotates `x` (batch, heads, seq, head_dim) by the angles of `cos`, `sin` (>= seq,
/// head_dim / 2); `inverse` rotates backwards, which is the backward of the rotation.
pub(crate) fn rope(
    x: (&CudaStorage, &Layout),
    cos: (&CudaStorage, &Layout),
    sin: (&CudaStorage, &Layout),
    inverse: bool,
) -> Result<(CudaStorage, Shape)> {
    let (s1, l1) = x;
    let dev = s1.device();
    let out = typed!(s1, "rope", |x| rope_fwd(x, l1, cos, sin, inverse, dev)?);
    Ok((out, l1.shape().clone()))
}

// ---------------------------------------------------------------------------------------------
// SwiGLU.

fn same_shape(a: &Layout, b: &Layout, what: &str) -> Result<()> {
    if a.dims() != b.dims() {
        bail!("{what}: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    Ok(())
}

fn swiglu_fwd<T: CudaDType + WithDType + DeviceRepr>(
    g: &CudaSlice<T>,
    gl: &Layout,
    u: &CudaStorage,
    ul: &Layout,
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    same_shape(gl, ul, "swiglu")?;
    let (g, u) = (own(g, gl, "swiglu gate")?, view::<T>(u, ul, "swiglu up")?);
    let len = gl.shape().elem_count();
    // SAFETY: the kernel writes every element.
    let mut out = unsafe { dev.alloc::<T>(len)? };
    if len > 0 {
        let f = kernel!(dev, T, "swiglu_fwd");
        let mut b = f.builder();
        b.arg(&g).arg(&u).arg(&mut out).arg(&len);
        // SAFETY: the arguments match the kernel's signature; every buffer holds len elements.
        unsafe { b.launch(config(per_elem(len))) }.w()?;
    }
    Ok(out)
}

/// `silu(gate) * up`.
pub(crate) fn swiglu(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let out = typed!(s1, "swiglu", |g| swiglu_fwd(g, l1, s2, l2, dev)?);
    Ok((out, l1.shape().clone()))
}

fn swiglu_bwd<T: CudaDType + WithDType + DeviceRepr>(
    g: &CudaSlice<T>,
    gl: &Layout,
    (us, ul): (&CudaStorage, &Layout),
    (ds, dl): (&CudaStorage, &Layout),
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    same_shape(gl, ul, "swiglu backward")?;
    same_shape(gl, dl, "swiglu backward")?;
    let g = own(g, gl, "swiglu gate")?;
    let u = view::<T>(us, ul, "swiglu up")?;
    let d = view::<T>(ds, dl, "swiglu output gradient")?;
    let len = gl.shape().elem_count();
    // SAFETY: the kernel writes both halves of every element's pair.
    let mut out = unsafe { dev.alloc::<T>(2 * len)? };
    if len > 0 {
        let f = kernel!(dev, T, "swiglu_bwd");
        let mut b = f.builder();
        b.arg(&g).arg(&u).arg(&d).arg(&mut out).arg(&len);
        // SAFETY: the arguments match the kernel's signature; `out` holds 2 * len elements,
        // the others len.
        unsafe { b.launch(config(per_elem(len))) }.w()?;
    }
    Ok(out)
}

/// The backward of [`swiglu`] from `gate`, `up` and the output gradient: a (2, n) matrix
/// holding the gradient of `gate` (flattened), then that of `up` (the CPU op's layout).
pub(crate) fn swiglu_backward(
    gate: (&CudaStorage, &Layout),
    up: (&CudaStorage, &Layout),
    grad: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (s1, l1) = gate;
    let dev = s1.device();
    let out = typed!(s1, "swiglu backward", |g| swiglu_bwd(g, l1, up, grad, dev)?);
    Ok((out, Shape::from((2, l1.shape().elem_count()))))
}

// ---------------------------------------------------------------------------------------------
// Softmax, plain and as attention's `softmax(scale * scores + mask)`.

/// The additive mask of a masked softmax: a storage read at the scores' shape (batch, heads,
/// tq, tk) through the strides of its layout (zero strides for broadcast dimensions).
type Mask<'a> = Option<(&'a CudaStorage, &'a Layout)>;

/// `softmax(scale * x + mask)` over the last dimension of `x`, whose rows are grouped as
/// (batch, heads, tq) for the mask's addressing. Without a mask, one zero read through all-zero
/// strides stands for it.
fn softmax_fwd<T: CudaDType + WithDType + DeviceRepr + ValidAsZeroBits>(
    x: &CudaSlice<T>,
    l: &Layout,
    mask: Mask<'_>,
    (heads, tq): (usize, usize),
    scale: f64,
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    let (rows, n) = rows_of(l, "softmax")?;
    let x = own(x, l, "softmax")?;
    let zero;
    let (mask, strides) = match mask {
        Some((ms, ml)) => {
            let want = [rows / (heads * tq).max(1), heads, tq, n];
            if ml.dims() != want {
                bail!(
                    "masked softmax: mask {:?} must be broadcast to the scores' shape {want:?}",
                    ml.dims()
                );
            }
            let st: Vec<i64> = ml.stride().iter().map(|&s| s as i64).collect();
            let m = ms.as_cuda_slice::<T>()?.slice(ml.start_offset()..);
            (m, [st[0], st[1], st[2], st[3]])
        }
        None => {
            zero = dev.alloc_zeros::<T>(1)?;
            (zero.slice(0..1), [0; 4])
        }
    };
    // SAFETY: the kernel writes every element.
    let mut out = unsafe { dev.alloc::<T>(rows * n)? };
    if rows * n > 0 {
        let (n32, h32, tq32) = (
            int(n, "softmax")?,
            int(heads, "softmax")?,
            int(tq, "softmax")?,
        );
        let scale = scale as f32;
        let f = kernel!(dev, T, "softmax_fwd");
        let mut bl = f.builder();
        bl.arg(&x)
            .arg(&mask)
            .arg(&mut out)
            .arg(&n32)
            .arg(&scale)
            .arg(&h32)
            .arg(&tq32);
        bl.arg(&strides[0])
            .arg(&strides[1])
            .arg(&strides[2])
            .arg(&strides[3]);
        // SAFETY: the arguments match the kernel's signature; the mask's strides and start
        // offset come from its layout at the scores' shape (or are all zero for the single
        // zero), so every element read lies inside its storage.
        unsafe { bl.launch(config(per_row(rows, n))) }.w()?;
    }
    Ok(out)
}

/// Softmax over the last dimension.
pub(crate) fn softmax(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let out = typed!(s, "softmax", |x| softmax_fwd(x, l, None, (1, 1), 1.0, dev)?);
    Ok((out, l.shape().clone()))
}

fn softmax_bwd<T: CudaDType + WithDType + DeviceRepr>(
    y: &CudaSlice<T>,
    yl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
    scale: f64,
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    same_shape(yl, gl, "softmax backward")?;
    let (rows, n) = rows_of(yl, "softmax backward")?;
    let y = own(y, yl, "softmax backward")?;
    let g = view::<T>(gs, gl, "softmax output gradient")?;
    // SAFETY: the kernel writes every element.
    let mut out = unsafe { dev.alloc::<T>(rows * n)? };
    if rows * n > 0 {
        let (n32, scale) = (int(n, "softmax")?, scale as f32);
        let f = kernel!(dev, T, "softmax_bwd");
        let mut b = f.builder();
        b.arg(&y).arg(&g).arg(&mut out).arg(&n32).arg(&scale);
        // SAFETY: the arguments match the kernel's signature; every buffer holds rows * n.
        unsafe { b.launch(config(per_row(rows, n))) }.w()?;
    }
    Ok(out)
}

/// The backward of a softmax from its output `y` and the output gradient, times `scale`:
/// `scale * y * (dy - sum(dy * y))`.
fn softmax_backward_scaled(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    scale: f64,
) -> Result<CudaStorage> {
    let dev = s1.device();
    Ok(typed!(s1, "softmax backward", |y| softmax_bwd(
        y, l1, s2, l2, scale, dev
    )?))
}

/// The backward of [`softmax`] from its output and the output gradient.
pub(crate) fn softmax_backward(
    y: (&CudaStorage, &Layout),
    grad: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    Ok((softmax_backward_scaled(y, grad, 1.0)?, y.1.shape().clone()))
}

// ---------------------------------------------------------------------------------------------
// Attention: the query heads that share a kv head are stacked along the row axis, so one cuBLAS
// batched matmul per product serves the group (GQA without copying keys and values), and the
// scaling, the mask and the softmax run in one kernel.

/// The sizes of one attention call: (batch * kv_heads) groups of `rows` = heads / kv_heads *
/// tq query rows against `tk` keys of width `d`.
#[derive(Clone, Copy)]
struct Groups {
    n: usize,
    rows: usize,
    tk: usize,
    d: usize,
    heads: usize,
    tq: usize,
}

impl Groups {
    fn new(ql: &Layout, kl: &Layout, vl: &Layout) -> Result<Self> {
        let dm = super::attention::Dims::new(ql, kl, vl)?;
        for (name, l) in [("q", ql), ("k", kl), ("v", vl)] {
            if !l.is_contiguous() {
                bail!("attention: the CUDA kernel needs a contiguous {name}");
            }
        }
        Ok(Self {
            n: dm.b * dm.kvh,
            rows: dm.rep() * dm.tq,
            tk: dm.tk,
            d: dm.d,
            heads: dm.h,
            tq: dm.tq,
        })
    }

    /// A contiguous (groups, rows, cols) matrix starting at `offset`.
    fn mat(&self, rows: usize, cols: usize, offset: usize) -> Layout {
        Layout::contiguous_with_offset((self.n, rows, cols), offset)
    }
}

/// `lhs @ rhs` over the groups, both given with their (groups, m, k) and (groups, k, n)
/// layouts (either may be a transposed view); gives a contiguous (groups, m, n) storage.
fn bmm((a, al): (&CudaStorage, &Layout), (b, bl): (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let (n, m, k) = al.shape().dims3()?;
    let cols = bl.dims()[2];
    a.matmul(b, (n, m, cols, k), al, bl)
}

/// The transpose of a (groups, rows, cols) layout.
fn t(l: &Layout) -> Result<Layout> {
    l.transpose(1, 2)
}

/// The probabilities `softmax(scale * q k^T + mask)` of every group, (groups, rows, tk).
fn probabilities(
    g: Groups,
    (q, ql): (&CudaStorage, &Layout),
    (k, kl): (&CudaStorage, &Layout),
    scale: f64,
    mask: &Option<Tensor>,
) -> Result<CudaStorage> {
    let dev = q.device();
    let kt = t(&g.mat(g.tk, g.d, kl.start_offset()))?;
    let scores = bmm((q, &g.mat(g.rows, g.d, ql.start_offset())), (k, &kt))?;
    let sl = g.mat(g.rows, g.tk, 0);
    let held = mask.as_ref().map(Tensor::storage_and_layout);
    let mask = match &held {
        Some((s, l)) => match &**s {
            Storage::Cuda(s) if s.dtype() == q.dtype() => Some((s, *l)),
            _ => bail!("attention: the mask must be on the CUDA device in q's dtype"),
        },
        None => None,
    };
    let hq = (g.heads, g.tq);
    Ok(typed!(&scores, "attention softmax", |x| softmax_fwd(
        x, &sl, mask, hq, scale, dev
    )?))
}

/// `softmax(scale * q k^T + mask) v` (batch, heads, tq, head_dim).
pub(crate) fn attention(
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
    scale: f64,
    mask: &Option<Tensor>,
) -> Result<(CudaStorage, Shape)> {
    let g = Groups::new(q.1, k.1, v.1)?;
    let p = probabilities(g, q, k, scale, mask)?;
    let vl = g.mat(g.tk, g.d, v.1.start_offset());
    let out = bmm((&p, &g.mat(g.rows, g.tk, 0)), (v.0, &vl))?;
    Ok((out, q.1.shape().clone()))
}

/// The backward of [`attention`] from `q`, `k`, `v` and the output gradient: one flat tensor
/// holding the gradients of `q`, `k` and `v` one after the other (the CPU op's layout). The
/// probabilities are recomputed, then `dv = p^T dO`, `dp = dO v^T`, `ds = scale * p * (dp -
/// sum(dp * p))`, `dq = ds k` and `dk = ds^T q`.
pub(crate) fn attention_backward(
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
    (grad, scale, mask): (&Tensor, f64, &Option<Tensor>),
) -> Result<(CudaStorage, Shape)> {
    let g = Groups::new(q.1, k.1, v.1)?;
    if grad.dims() != q.1.dims() || !grad.is_contiguous() {
        bail!(
            "attention backward: the gradient {:?} must be contiguous with the shape of q {:?}",
            grad.dims(),
            q.1.dims()
        );
    }
    let (gs, gl) = grad.storage_and_layout();
    let Storage::Cuda(gs) = &*gs else {
        bail!("attention backward: the gradient must be on the CUDA device like q")
    };
    let p = probabilities(g, q, k, scale, mask)?;
    let pl = g.mat(g.rows, g.tk, 0);
    let dol = g.mat(g.rows, g.d, gl.start_offset());
    let (ql, kl) = (
        g.mat(g.rows, g.d, q.1.start_offset()),
        g.mat(g.tk, g.d, k.1.start_offset()),
    );
    let vl = g.mat(g.tk, g.d, v.1.start_offset());
    let dv = bmm((&p, &t(&pl)?), (gs, &dol))?;
    let dp = bmm((gs, &dol), (v.0, &t(&vl)?))?;
    let ds = softmax_backward_scaled((&p, &pl), (&dp, &pl), scale)?;
    drop((p, dp));
    let dq = bmm((&ds, &pl), (k.0, &kl))?;
    let dk = bmm((&ds, &t(&pl)?), (q.0, &ql))?;
    let (nq, nk) = (q.1.shape().elem_count(), k.1.shape().elem_count());
    let n = nq + 2 * nk;
    let dev = q.0.device();
    // SAFETY: the three copies below write every element.
    let mut out = unsafe { dev.alloc_uninit(&Shape::from(n), q.0.dtype())? };
    for (part, offset, len) in [(&dq, 0, nq), (&dk, nq, nk), (&dv, nq + nk, nk)] {
        part.copy_strided_src(&mut out, offset, &Layout::contiguous(len))?;
    }
    Ok((out, Shape::from(n)))
}

// ---------------------------------------------------------------------------------------------
// Log-softmax gathered at the targets.

fn check_targets(l: &Layout, tl: &Layout) -> Result<(usize, usize)> {
    let (rows, n) = rows_of(l, "log_softmax_gather logits")?;
    if tl.dims() != &l.dims()[..l.dims().len() - 1] {
        bail!(
            "log_softmax_gather: targets {:?} must have the leading dimensions of logits {:?}",
            tl.dims(),
            l.dims()
        );
    }
    Ok((rows, n))
}

fn lsg_fwd<T: CudaDType + WithDType + DeviceRepr>(
    x: &CudaSlice<T>,
    l: &Layout,
    ts: &CudaStorage,
    tl: &Layout,
    dev: &CudaDevice,
) -> Result<CudaSlice<f32>> {
    let (rows, n) = check_targets(l, tl)?;
    let x = own(x, l, "log_softmax_gather logits")?;
    let t = view::<u32>(ts, tl, "log_softmax_gather targets")?;
    // SAFETY: the kernel writes one value per row.
    let mut out = unsafe { dev.alloc::<f32>(rows)? };
    if rows > 0 {
        let n32 = int(n, "log_softmax_gather")?;
        let f = kernel!(dev, T, "log_softmax_gather_fwd");
        let mut b = f.builder();
        b.arg(&x).arg(&t).arg(&mut out).arg(&n32);
        // SAFETY: the arguments match the kernel's signature; `x` holds rows * n elements,
        // `t` and `out` one per row.
        unsafe { b.launch(config(per_row(rows, n))) }.w()?;
    }
    Ok(out)
}

/// `log_softmax(logits)[.., target]` from the logits and u32 targets. Gives f32
/// log-probabilities whatever the logits' dtype: bf16 ones would be too coarse for the
/// importance ratios built from them.
pub(crate) fn log_softmax_gather(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let out = match &s1.slice {
        CudaStorageSlice::F32(x) => lsg_fwd(x, l1, s2, l2, dev)?,
        CudaStorageSlice::BF16(x) => lsg_fwd(x, l1, s2, l2, dev)?,
        _ => bail!(
            "log_softmax_gather: the CUDA kernels take f32 or bf16, got {:?}",
            s1.dtype()
        ),
    };
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        l2.shape().clone(),
    ))
}

fn lsg_bwd<T: CudaDType + WithDType + DeviceRepr>(
    x: &CudaSlice<T>,
    l: &Layout,
    (ts, tl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    let (rows, n) = check_targets(l, tl)?;
    same_shape(tl, gl, "log_softmax_gather backward")?;
    let x = own(x, l, "log_softmax_gather logits")?;
    let t = view::<u32>(ts, tl, "log_softmax_gather targets")?;
    let g = view::<f32>(gs, gl, "log_softmax_gather output gradient")?;
    // SAFETY: the kernel writes every element.
    let mut out = unsafe { dev.alloc::<T>(rows * n)? };
    if rows * n > 0 {
        let n32 = int(n, "log_softmax_gather")?;
        let f = kernel!(dev, T, "log_softmax_gather_bwd");
        let mut b = f.builder();
        b.arg(&x).arg(&t).arg(&g).arg(&mut out).arg(&n32);
        // SAFETY: the arguments match the kernel's signature; `x` and `out` hold rows * n
        // elements, `t` and `g` one per row.
        unsafe { b.launch(config(per_row(rows, n))) }.w()?;
    }
    Ok(out)
}

/// The backward of [`log_softmax_gather`] from the logits, the targets and the (f32) output
/// gradient: the gradient of the logits in their dtype.
pub(crate) fn log_softmax_gather_backward(
    (s1, l1): (&CudaStorage, &Layout),
    targets: (&CudaStorage, &Layout),
    grad: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let out = typed!(s1, "log_softmax_gather backward", |x| lsg_bwd(
        x, l1, targets, grad, dev
    )?);
    Ok((out, l1.shape().clone()))
}
