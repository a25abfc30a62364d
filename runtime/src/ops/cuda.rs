//! The fused ops on CUDA: candle custom ops that launch the kernels of `runtime/kernels/recap.cu`
//! (compiled to PTX by the build script) on candle's CUDA device, for f32 and bf16 tensors, each
//! with a backward that is itself a kernel. Takes the same arguments as the functions of
//! [`super`] and gives the same values as their `reference` compositions, up to rounding; like
//! the CPU kernels, a softmax row that is entirely `-inf` gives zeros and the backward passes
//! are not themselves differentiable.
//!
//! Every input is made contiguous before a launch, so each kernel indexes plain row-major
//! buffers (RoPE of a transposed view copies it once). Attention is two cuBLAS batched matmuls
//! (candle's) around one fused kernel for `softmax(scale * scores + mask)`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{kernel_name, CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape,
    Tensor, WithDType,
};

/// The PTX of `kernels/recap.cu`, loaded once per device under the module name [`MODULE`].
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/recap.ptx"));
const MODULE: &str = "recap";

/// Threads per block of the element-wise kernels.
const ELEMENTWISE_BLOCK: u32 = 256;

/// True when every tensor lives on a CUDA device in one dtype the kernels compute in.
pub(crate) fn eligible(ts: &[&Tensor]) -> bool {
    let dtype = ts[0].dtype();
    matches!(dtype, DType::F32 | DType::BF16)
        && ts
            .iter()
            .all(|t| t.device().is_cuda() && t.dtype() == dtype)
}

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

/// One block per row, its width the row length rounded up to whole warps, at most 256 threads
/// (which leaves every kernel room for up to 255 registers a thread).
fn per_row(rows: usize, n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: ((n.div_ceil(32) * 32).clamp(32, 256) as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per element.
fn per_elem(len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (len.div_ceil(ELEMENTWISE_BLOCK as usize) as u32, 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
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

/// Implements candle's `CustomOp2` (`op2`) or `CustomOp3` (`op3`) for a CUDA-only op: its
/// `cpu_fwd` refuses, its `cuda_fwd` runs the given body with the op, the device of the first
/// input and the inputs' storages and layouts bound to the given names, and the items after
/// `;` (a `bwd`) complete the impl.
macro_rules! cuda_op {
    (op2 $op:ty, $name:literal,
     |$this:pat, $dev:ident, $s1:ident, $l1:ident, $s2:ident, $l2:ident| $fwd:block
     $(; $($rest:tt)*)?) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                _: &CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                no_cpu(self.name())
            }

            fn cuda_fwd(
                &self,
                $s1: &CudaStorage,
                $l1: &Layout,
                $s2: &CudaStorage,
                $l2: &Layout,
            ) -> Result<(CudaStorage, Shape)> {
                let $this = self;
                let $dev = $s1.device();
                $fwd
            }

            $($($rest)*)?
        }
    };
    (op3 $op:ty, $name:literal,
     |$this:pat, $dev:ident, $s1:ident, $l1:ident, $s2:ident, $l2:ident, $s3:ident,
      $l3:ident| $fwd:block
     $(; $($rest:tt)*)?) => {
        impl CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                _: &CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                no_cpu(self.name())
            }

            // The three storages and layouts are candle's signature for a three-input op.
            #[allow(clippy::too_many_arguments)]
            fn cuda_fwd(
                &self,
                $s1: &CudaStorage,
                $l1: &Layout,
                $s2: &CudaStorage,
                $l2: &Layout,
                $s3: &CudaStorage,
                $l3: &Layout,
            ) -> Result<(CudaStorage, Shape)> {
                let $this = self;
                let $dev = $s1.device();
                $fwd
            }

            $($($rest)*)?
        }
    };
}

/// Every op here runs on CUDA only; the dispatch in [`super`] never sends it CPU tensors.
fn no_cpu<R>(name: &str) -> Result<R> {
    bail!("{name}: the CUDA kernel was called on CPU tensors")
}

// ---------------------------------------------------------------------------------------------
// RMSNorm.

pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f64,
}

/// Gives the gradient of `x` in its first rows and, when `want_dw`, that of the weight in one
/// more row (the CPU op's layout).
struct RmsNormBwd {
    eps: f64,
    want_dw: bool,
}

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
    let out = unsafe { dev.alloc::<T>(rows * n)? };
    if rows * n > 0 {
        let (n32, eps) = (int(n, "rms_norm")?, eps as f32);
        let f = kernel!(dev, T, "rms_norm_fwd");
        let mut b = f.builder();
        b.arg(&x).arg(&w).arg(&out).arg(&n32).arg(&eps);
        // SAFETY: the argument list matches the kernel's signature; each buffer holds rows * n
        // (or n, the weight) elements of T.
        unsafe { b.launch(per_row(rows, n)) }.w()?;
    }
    Ok(out)
}

cuda_op!(op2 RmsNorm, "recap-cuda-rms-norm", |op, dev, s1, l1, s2, l2| {
    let out = typed!(s1, "rms_norm", |x| rms_norm_fwd(x, l1, s2, l2, op.eps, dev)?);
    Ok((out, l1.shape().clone()))
};
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let want_dw = w.track_op();
        let n = w.dim(0)?;
        let rows = x.elem_count() / n.max(1);
        let op = RmsNormBwd {
            eps: self.eps,
            want_dw,
        };
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = match want_dw {
            true => Some(both.narrow(0, rows, 1)?.reshape(n)?),
            false => None,
        };
        Ok((Some(dx), dw))
    }
);

// The backward takes every input and both flags of the op.
#[allow(clippy::too_many_arguments)]
fn rms_norm_bwd<T: CudaDType + WithDType + DeviceRepr>(
    x: &CudaSlice<T>,
    l: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    op: &RmsNormBwd,
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
    let out_rows = rows + usize::from(op.want_dw);
    // SAFETY: the kernels write every element (the weight row only when it exists).
    let mut out = unsafe { dev.alloc::<T>(out_rows * n)? };
    if n == 0 {
        return Ok(out);
    }
    let (n32, rows32, eps) = (int(n, "rms_norm")?, int(rows, "rms_norm")?, op.eps as f32);
    // SAFETY: written by the first kernel, one value per row, before the second reads it.
    let rs = unsafe { dev.alloc::<f32>(rows.max(1))? };
    if rows > 0 {
        let mut dx = out.slice_mut(0..rows * n);
        let f = kernel!(dev, T, "rms_norm_bwd");
        let mut b = f.builder();
        b.arg(&x)
            .arg(&w)
            .arg(&g)
            .arg(&mut dx)
            .arg(&rs)
            .arg(&n32)
            .arg(&eps);
        // SAFETY: the arguments match the kernel's signature; `dx` and `g` hold rows * n
        // elements, `rs` one per row.
        unsafe { b.launch(per_row(rows, n)) }.w()?;
    }
    if op.want_dw {
        let acc = dev.alloc_zeros::<f32>(n)?;
        if rows > 0 {
            // Each thread sums `chunk` rows of one column; grid.y (at most 65535) covers the
            // rows.
            let chunk = rows.div_ceil(65_535).max(64);
            let cfg = LaunchConfig {
                grid_dim: (
                    n.div_ceil(ELEMENTWISE_BLOCK as usize) as u32,
                    rows.div_ceil(chunk) as u32,
                    1,
                ),
                block_dim: (ELEMENTWISE_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let chunk32 = int(chunk, "rms_norm")?;
            let f = kernel!(dev, T, "rms_norm_dw");
            let mut b = f.builder();
            b.arg(&x)
                .arg(&g)
                .arg(&rs)
                .arg(&acc)
                .arg(&rows32)
                .arg(&n32)
                .arg(&chunk32);
            // SAFETY: the arguments match the kernel's signature; `acc` holds n zeroed floats.
            unsafe { b.launch(cfg) }.w()?;
        }
        // With no rows the weight gradient is the zeroed accumulator.
        let mut dw = out.slice_mut(rows * n..);
        let f = kernel!(dev, T, "cast_from_f32");
        let mut b = f.builder();
        b.arg(&acc).arg(&mut dw).arg(&n32);
        // SAFETY: `acc` and `dw` both hold n elements.
        unsafe { b.launch(per_elem(n)) }.w()?;
    }
    Ok(out)
}

cuda_op!(op3 RmsNormBwd, "recap-cuda-rms-norm-bwd", |op, dev, s1, l1, s2, l2, s3, l3| {
    let (rows, n) = rows_of(l1, "rms_norm backward")?;
    let out = typed!(s1, "rms_norm backward", |x| rms_norm_bwd(
        x, l1, s2, l2, s3, l3, op, dev
    )?);
    Ok((out, Shape::from((rows + usize::from(op.want_dw), n))))
});

// ---------------------------------------------------------------------------------------------
// RoPE.

pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope { inverse: false },
    )
}

/// Rotates `x` (batch, heads, seq, head_dim) by the angles of `cos`, `sin` (>= seq,
/// head_dim / 2); `inverse` rotates backwards, which is the backward of the rotation.
struct Rope {
    inverse: bool,
}

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
    let out = unsafe { dev.alloc::<T>(len)? };
    if len > 0 {
        let pairs = len / 2;
        let (seq32, half32) = (int(seq, "rope")?, int(half, "rope")?);
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        let f = kernel!(dev, T, "rope");
        let mut b = f.builder();
        b.arg(&x)
            .arg(&cos)
            .arg(&sin)
            .arg(&out)
            .arg(&pairs)
            .arg(&seq32)
            .arg(&half32)
            .arg(&sign);
        // SAFETY: the arguments match the kernel's signature; `cos` and `sin` hold at least
        // seq * half elements, `x` and `out` 2 * pairs.
        unsafe { b.launch(per_elem(pairs)) }.w()?;
    }
    Ok(out)
}

cuda_op!(op3 Rope, "recap-cuda-rope", |op, dev, s1, l1, s2, l2, s3, l3| {
    let out = typed!(s1, "rope", |x| rope_fwd(
        x,
        l1,
        (s2, l2),
        (s3, l3),
        op.inverse,
        dev
    )?);
    Ok((out, l1.shape().clone()))
};
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inv = Rope {
            inverse: !self.inverse,
        };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &inv)?;
        Ok((Some(dx), None, None))
    }
);

// ---------------------------------------------------------------------------------------------
// SwiGLU.

pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)
}

struct Swiglu;

/// Gives (2, ...): the gradient of `gate`, then that of `up`.
struct SwigluBwd;

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
    let out = unsafe { dev.alloc::<T>(len)? };
    if len > 0 {
        let f = kernel!(dev, T, "swiglu_fwd");
        let mut b = f.builder();
        b.arg(&g).arg(&u).arg(&out).arg(&len);
        // SAFETY: the arguments match the kernel's signature; every buffer holds len elements.
        unsafe { b.launch(per_elem(len)) }.w()?;
    }
    Ok(out)
}

cuda_op!(op2 Swiglu, "recap-cuda-swiglu", |_, dev, s1, l1, s2, l2| {
    let out = typed!(s1, "swiglu", |g| swiglu_fwd(g, l1, s2, l2, dev)?);
    Ok((out, l1.shape().clone()))
};
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwigluBwd)?;
        let dg = both.get(0)?.reshape(gate.shape())?;
        let du = both.get(1)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
);

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
    let out = unsafe { dev.alloc::<T>(2 * len)? };
    if len > 0 {
        let f = kernel!(dev, T, "swiglu_bwd");
        let mut b = f.builder();
        b.arg(&g).arg(&u).arg(&d).arg(&out).arg(&len);
        // SAFETY: the arguments match the kernel's signature; `out` holds 2 * len elements,
        // the others len.
        unsafe { b.launch(per_elem(len)) }.w()?;
    }
    Ok(out)
}

cuda_op!(op3 SwigluBwd, "recap-cuda-swiglu-bwd", |_, dev, s1, l1, s2, l2, s3, l3| {
    let out = typed!(s1, "swiglu backward", |g| swiglu_bwd(
        g,
        l1,
        (s2, l2),
        (s3, l3),
        dev
    )?);
    let mut dims = vec![2];
    dims.extend_from_slice(l1.dims());
    Ok((out, Shape::from(dims)))
});

// ---------------------------------------------------------------------------------------------
// Softmax, plain and as attention's `softmax(scale * scores + mask)`.

pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / n.max(1);
    let shape = (1, 1, rows, n);
    // A single zero read through all-zero strides stands for "no mask".
    let zero = Tensor::zeros(1, x.dtype(), x.device())?.reshape((1, 1, 1, 1))?;
    let mask = zero.broadcast_as(shape)?;
    let y = x
        .contiguous()?
        .reshape(shape)?
        .apply_op2(&mask, MaskedSoftmax { scale: 1.0 })?;
    y.reshape(x.shape())
}

/// `softmax(scale * scores + mask)` over the last dimension of `scores` (batch, heads, tq, tk),
/// with `mask` read at that shape through its (possibly zero) strides. The mask gets no
/// gradient.
struct MaskedSoftmax {
    scale: f64,
}

/// Backward: the output `y` and its gradient in, the gradient of `scores` out.
struct MaskedSoftmaxBwd {
    scale: f64,
}

fn softmax_fwd<T: CudaDType + WithDType + DeviceRepr>(
    x: &CudaSlice<T>,
    l: &Layout,
    ms: &CudaStorage,
    ml: &Layout,
    scale: f64,
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    let (b, h, tq, tk) = match l.dims() {
        &[b, h, tq, tk] => (b, h, tq, tk),
        dims => bail!("masked softmax: scores must be (batch, heads, tq, tk), got {dims:?}"),
    };
    if ml.dims() != l.dims() {
        bail!(
            "masked softmax: mask {:?} must be broadcast to the scores' shape {:?}",
            ml.dims(),
            l.dims()
        );
    }
    let x = own(x, l, "masked softmax")?;
    let mask = ms.as_cuda_slice::<T>()?.slice(ml.start_offset()..);
    let rows = b * h * tq;
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<T>(rows * tk)? };
    if rows * tk > 0 {
        let st = ml.stride();
        let strides: Vec<i64> = st.iter().map(|&s| s as i64).collect();
        let (n32, h32, tq32) = (int(tk, "softmax")?, int(h, "softmax")?, int(tq, "softmax")?);
        let scale = scale as f32;
        let f = kernel!(dev, T, "softmax_fwd");
        let mut bl = f.builder();
        bl.arg(&x)
            .arg(&mask)
            .arg(&out)
            .arg(&n32)
            .arg(&scale)
            .arg(&h32)
            .arg(&tq32);
        bl.arg(&strides[0])
            .arg(&strides[1])
            .arg(&strides[2])
            .arg(&strides[3]);
        // SAFETY: the arguments match the kernel's signature; the mask's strides and start
        // offset come from its layout at the scores' shape, so every element read lies inside
        // its storage.
        unsafe { bl.launch(per_row(rows, tk)) }.w()?;
    }
    Ok(out)
}

cuda_op!(op2 MaskedSoftmax, "recap-cuda-masked-softmax", |op, dev, s1, l1, s2, l2| {
    let out = typed!(s1, "masked softmax", |x| softmax_fwd(
        x, l1, s2, l2, op.scale, dev
    )?);
    Ok((out, l1.shape().clone()))
};
    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = MaskedSoftmaxBwd { scale: self.scale };
        let dx = res.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        Ok((Some(dx), None))
    }
);

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
    let out = unsafe { dev.alloc::<T>(rows * n)? };
    if rows * n > 0 {
        let (n32, scale) = (int(n, "softmax")?, scale as f32);
        let f = kernel!(dev, T, "softmax_bwd");
        let mut b = f.builder();
        b.arg(&y).arg(&g).arg(&out).arg(&n32).arg(&scale);
        // SAFETY: the arguments match the kernel's signature; every buffer holds rows * n.
        unsafe { b.launch(per_row(rows, n)) }.w()?;
    }
    Ok(out)
}

cuda_op!(op2 MaskedSoftmaxBwd, "recap-cuda-masked-softmax-bwd", |op, dev, s1, l1, s2, l2| {
    let out = typed!(s1, "softmax backward", |y| softmax_bwd(
        y, l1, s2, l2, op.scale, dev
    )?);
    Ok((out, l1.shape().clone()))
});

/// Attention as in [`super::attention`]: the query heads that share a kv head are stacked along
/// the row axis so one cuBLAS batched matmul per product serves the group, and the scaling, the
/// mask and the softmax run in one kernel.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (_, kvh, tk, _) = k.dims4()?;
    if kvh == 0 || h % kvh != 0 {
        bail!("attention: {h} query heads are not a multiple of {kvh} kv heads");
    }
    let rep = h / kvh;
    let shape = (b, h, tq, tk);
    let q = q.contiguous()?.reshape((b, kvh, rep * tq, d))?;
    let scores = q.matmul(&k.t()?)?.reshape(shape)?;
    let mask = match mask {
        Some(m) => m.to_dtype(scores.dtype())?.broadcast_as(shape)?,
        None => Tensor::zeros(1, scores.dtype(), scores.device())?
            .reshape((1, 1, 1, 1))?
            .broadcast_as(shape)?,
    };
    let p = scores.apply_op2(&mask, MaskedSoftmax { scale })?;
    p.reshape((b, kvh, rep * tq, tk))?
        .matmul(v)?
        .reshape((b, h, tq, d))
}

// ---------------------------------------------------------------------------------------------
// Log-softmax gathered at the targets.

/// Gives f32 log-probabilities whatever the logits' dtype: bf16 ones would be too coarse for the
/// importance ratios built from them.
pub(crate) fn log_softmax_gather(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    logits.contiguous()?.apply_op2(&targets, LogSoftmaxGather)
}

struct LogSoftmaxGather;

/// Backward: `logits`, `targets` and the (f32) output gradient in, the gradient of `logits` out
/// in their dtype.
struct LogSoftmaxGatherBwd;

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
    let out = unsafe { dev.alloc::<f32>(rows)? };
    if rows > 0 {
        let n32 = int(n, "log_softmax_gather")?;
        let f = kernel!(dev, T, "log_softmax_gather_fwd");
        let mut b = f.builder();
        b.arg(&x).arg(&t).arg(&out).arg(&n32);
        // SAFETY: the arguments match the kernel's signature; `x` holds rows * n elements,
        // `t` and `out` one per row.
        unsafe { b.launch(per_row(rows, n)) }.w()?;
    }
    Ok(out)
}

cuda_op!(op2 LogSoftmaxGather, "recap-cuda-log-softmax-gather", |_, dev, s1, l1, s2, l2| {
    let out = match &s1.slice {
        CudaStorageSlice::F32(x) => lsg_fwd(x, l1, s2, l2, dev)?,
        CudaStorageSlice::BF16(x) => lsg_fwd(x, l1, s2, l2, dev)?,
        _ => bail!(
            "log_softmax_gather: the CUDA kernels take f32 or bf16, got {:?}",
            s1.dtype()
        ),
    };
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), l2.shape().clone()))
};
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &LogSoftmaxGatherBwd)?;
        Ok((Some(dx), None))
    }
);

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
    let out = unsafe { dev.alloc::<T>(rows * n)? };
    if rows * n > 0 {
        let n32 = int(n, "log_softmax_gather")?;
        let f = kernel!(dev, T, "log_softmax_gather_bwd");
        let mut b = f.builder();
        b.arg(&x).arg(&t).arg(&g).arg(&out).arg(&n32);
        // SAFETY: the arguments match the kernel's signature; `x` and `out` hold rows * n
        // elements, `t` and `g` one per row.
        unsafe { b.launch(per_row(rows, n)) }.w()?;
    }
    Ok(out)
}

cuda_op!(op3 LogSoftmaxGatherBwd, "recap-cuda-log-softmax-gather-bwd",
    |_, dev, s1, l1, s2, l2, s3, l3| {
    let out = typed!(s1, "log_softmax_gather backward", |x| lsg_bwd(
        x,
        l1,
        (s2, l2),
        (s3, l3),
        dev
    )?);
    Ok((out, l1.shape().clone()))
});
