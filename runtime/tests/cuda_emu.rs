//! The CUDA kernels of `kernels/recap.cu`, run on the CPU by an emulator (`kernels/emu/emu.cpp`,
//! compiled here with the host's C++ compiler: every CUDA thread a fiber, warp shuffles and
//! barriers as rendezvous), against the reference compositions of `ops::reference`: values, and
//! gradients through candle's autograd, in f32 and bf16, at the launch geometry `ops::launch`
//! gives the CUDA path, on shapes that leave idle lanes, stride over long rows and split the
//! RMSNorm weight gradient across blocks. No GPU and no `cuda` feature are needed. Not covered
//! here (`tests/cuda.rs` covers them on a GPU): the driver, cuBLAS (attention's products) and the
//! order and types in which the Rust launchers pass their arguments.
//!
//! Every buffer a kernel sees has guards on both sides, longer than a block, so an out-of-bounds
//! write shows as a changed guard and an out-of-bounds read as a huge value in the output.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{Device, Tensor, Var};
use recap_runtime::ops::launch::{self, per_elem, per_row, Geometry};
use recap_runtime::ops::reference;

type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    *const u32,
    *const u32,
    *mut *mut c_void,
    *mut c_char,
    usize,
) -> c_int;
type KernelsFn = unsafe extern "C" fn(*mut c_char, usize);

struct Emu {
    launch: LaunchFn,
    kernels: KernelsFn,
    // Keeps the functions above mapped.
    _lib: libloading::Library,
}

/// The emulator, compiled and loaded once per test process.
fn emu() -> &'static Emu {
    static EMU: OnceLock<Emu> = OnceLock::new();
    EMU.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/emu");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let lib = dir.path().join("librecap_emu.so");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let out = Command::new(&cxx)
            .args(["-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-I"])
            .arg(&src)
            .arg(src.join("emu.cpp"))
            .arg("-o")
            .arg(&lib)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run the C++ compiler `{cxx}` ({e}): the emulated-kernel tests need one (install g++ or set CXX)")
            });
        let diagnostics = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{cxx} failed on kernels/emu/emu.cpp:\n{diagnostics}"
        );
        if !diagnostics.trim().is_empty() {
            eprintln!("{cxx} warned on kernels/emu/emu.cpp:\n{diagnostics}");
        }
        // SAFETY: the library is the one just built from emu.cpp; loading it runs only the
        // constructors of its C++ statics. The file can go once it is mapped.
        let lib = unsafe { libloading::Library::new(&lib) }.expect("load the emulator");
        // SAFETY: the symbols are emu.cpp's `extern "C"` functions of exactly these types.
        let (launch, kernels) = unsafe {
            (
                *lib.get::<LaunchFn>(b"recap_emu_launch\0").expect("recap_emu_launch"),
                *lib.get::<KernelsFn>(b"recap_emu_kernels\0").expect("recap_emu_kernels"),
            )
        };
        Emu {
            launch,
            kernels,
            _lib: lib,
        }
    })
}

/// One kernel argument, as a CUDA launch takes it.
#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
    U64(u64),
    I64(i64),
}

/// Runs kernel `name` with geometry `g`; the emulator's error text on failure.
fn launch(name: &str, g: Geometry, args: &[Arg]) -> Result<(), String> {
    // Each argument sits in an 8-byte slot that the kernel reads at its own type's width,
    // which is the slot's first bytes on a little-endian machine.
    const { assert!(cfg!(target_endian = "little")) };
    let mut slots: Vec<u64> = args
        .iter()
        .map(|a| match *a {
            Arg::Ptr(v) | Arg::U64(v) => v,
            Arg::I32(v) => u64::from(v as u32),
            Arg::F32(v) => u64::from(v.to_bits()),
            Arg::I64(v) => v as u64,
        })
        .collect();
    let mut ptrs: Vec<*mut c_void> = slots
        .iter_mut()
        .map(|s| (s as *mut u64).cast::<c_void>())
        .collect();
    let name_c = CString::new(name).unwrap();
    let (grid, block) = (
        [g.grid.0, g.grid.1, g.grid.2],
        [g.block.0, g.block.1, g.block.2],
    );
    let mut err = vec![0 as c_char; 512];
    // SAFETY: every pointer argument points into a live `Buf` sized for the launch (or past it
    // on purpose, into its guards, in the guard test); the slots outlive the call.
    let rc = unsafe {
        (emu().launch)(
            name_c.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            ptrs.as_mut_ptr(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned()),
    }
}

/// Storage types of the kernels' buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dt {
    F32,
    Bf16,
    U32,
}

impl Dt {
    fn size(self) -> usize {
        match self {
            Dt::Bf16 => 2,
            Dt::F32 | Dt::U32 => 4,
        }
    }

    /// The suffix of the kernels for this element type.
    fn suffix(self) -> &'static str {
        match self {
            Dt::Bf16 => "bf16",
            _ => "f32",
        }
    }
}

/// Guard elements on each side of a buffer: two blocks of the element-wise kernels, so a launch
/// rounded up to whole blocks that forgets its bound writes into the guard, not the heap (RoPE
/// writes two elements a thread).
const GUARD: usize = 2 * launch::ELEMENTWISE_BLOCK as usize;
/// The guards' bytes: about 3.4e38 in f32 and bf16 (finite, so a maximum picks it up where a
/// NaN would be dropped, and it overflows what it is multiplied into), a token id outside any
/// vocabulary in u32.
const GUARD_BYTES: [u8; 4] = [0xa5, 0xa5, 0x7f, 0x7f];

/// A device buffer: its elements between guards.
struct Buf {
    dt: Dt,
    bytes: Vec<u8>,
}

impl Buf {
    fn raw(dt: Dt, body: Vec<u8>) -> Buf {
        let guard: Vec<u8> = GUARD_BYTES[4 - dt.size()..]
            .iter()
            .copied()
            .cycle()
            .take(GUARD * dt.size())
            .collect();
        Buf {
            dt,
            bytes: [guard.clone(), body, guard].concat(),
        }
    }

    /// `xs` stored as `dt` (bf16 rounded to nearest, as candle and the GPU round).
    fn of(dt: Dt, xs: &[f32]) -> Buf {
        let body = match dt {
            Dt::F32 => xs.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dt::Bf16 => xs
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            Dt::U32 => panic!("token ids go through Buf::ids"),
        };
        Buf::raw(dt, body)
    }

    fn ids(ts: &[u32]) -> Buf {
        Buf::raw(Dt::U32, ts.iter().flat_map(|t| t.to_le_bytes()).collect())
    }

    fn zeros(dt: Dt, len: usize) -> Buf {
        Buf::raw(dt, vec![0; len * dt.size()])
    }

    fn ptr(&mut self) -> Arg {
        Arg::Ptr(self.bytes[GUARD * self.dt.size()..].as_mut_ptr() as u64)
    }

    /// The elements as f32, or which guard a kernel wrote over.
    fn read(&self) -> Result<Vec<f32>, String> {
        let (s, g) = (self.dt.size(), GUARD * self.dt.size());
        let body = &self.bytes[g..self.bytes.len() - g];
        let fresh = Buf::raw(self.dt, Vec::new());
        if self.bytes[..g] != fresh.bytes[..g] {
            return Err("the guard before the buffer was written".into());
        }
        if self.bytes[self.bytes.len() - g..] != fresh.bytes[g..] {
            return Err("the guard after the buffer was written".into());
        }
        Ok(body
            .chunks(s)
            .map(|c| match self.dt {
                Dt::F32 => f32::from_le_bytes(c.try_into().unwrap()),
                Dt::Bf16 => half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32(),
                Dt::U32 => u32::from_le_bytes(c.try_into().unwrap()) as f32,
            })
            .collect())
    }

    fn values(&self) -> Vec<f32> {
        self.read().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `xs` as the kernel sees them in `dt` (bf16-rounded), so the reference starts from the same
/// inputs.
fn seen(dt: Dt, xs: &[f32]) -> Vec<f32> {
    match dt {
        Dt::Bf16 => xs
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect(),
        _ => xs.to_vec(),
    }
}

/// A small deterministic generator (64-bit LCG), uniform in [lo, hi).
struct Lcg(u64);

impl Lcg {
    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }
}

fn tensor(xs: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(xs, shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// `got` equals `want` to within the rounding of an output stored as `dt`: `got` is NaN where
/// `want` is, and elsewhere within a relative and an absolute part, the latter scaled to the
/// largest |want| (an element that is a difference of larger terms carries their rounding).
fn assert_close(what: &str, dt: Dt, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want
        .iter()
        .filter(|w| w.is_finite())
        .fold(0f32, |m, w| m.max(w.abs()));
    let (rel, abs) = match dt {
        Dt::Bf16 => (8e-3, 8e-3 * scale),
        _ => (1e-4, 1e-5 * scale.max(1e-3)),
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            (g - w).abs() <= abs + rel * w.abs()
        };
        assert!(ok, "{what} ({dt:?}) element {i}: got {g}, want {w}");
    }
}

/// The kernels' output rows where the reference gives NaN for a whole row (every score masked)
/// are zeros.
fn masked_rows_are_zero(want: &mut [f32], n: usize) {
    for row in want.chunks_mut(n) {
        if row.iter().all(|v| v.is_nan()) {
            row.fill(0.0);
        }
    }
}

fn run(name: &str, dt: Dt, g: Geometry, args: &[Arg]) {
    let kernel = format!("{name}_{}", dt.suffix());
    launch(&kernel, g, args).unwrap_or_else(|e| panic!("{kernel}: {e}"));
}

const DTS: [Dt; 2] = [Dt::F32, Dt::Bf16];

#[test]
fn rms_norm_and_its_gradients_match_the_reference() {
    let eps = 1e-6f32;
    let mut rng = Lcg(1);
    // Rows longer than the block (300 over 256 threads), idle lanes (40 of 64), and rows split
    // into three chunks for the weight gradient (150 rows). The widest block goes first: the
    // emulator's shared arrays keep what an earlier launch on the thread left, as a GPU's hold
    // garbage, so a reduction reading past its warps' partial sums reads stale values.
    for (rows, n) in [(4, 300), (3, 40), (150, 40)] {
        for dt in DTS {
            let x = seen(dt, &rng.uniform(rows * n, -2.0, 2.0));
            let w = seen(dt, &rng.uniform(n, 0.5, 1.5));
            let dy = seen(dt, &rng.uniform(rows * n, -1.0, 1.0));
            let (mut bx, mut bw, mut bdy) = (Buf::of(dt, &x), Buf::of(dt, &w), Buf::of(dt, &dy));
            let mut y = Buf::zeros(dt, rows * n);
            let n32 = n as i32;
            let args = [bx.ptr(), bw.ptr(), y.ptr(), Arg::I32(n32), Arg::F32(eps)];
            run("rms_norm_fwd", dt, per_row(rows, n), &args);

            let xv = Var::from_tensor(&tensor(&x, &[rows, n])).unwrap();
            let wv = Var::from_tensor(&tensor(&w, &[n])).unwrap();
            let want = reference::rms_norm(xv.as_tensor(), wv.as_tensor(), eps.into()).unwrap();
            assert_close("rms_norm", dt, &y.values(), &flat(&want));

            // The backward as the CUDA launcher runs it: dx and each row's r, the weight
            // gradient summed in f32 by chunks of rows, then cast to the weight's dtype.
            let (mut dx, mut rs) = (Buf::zeros(dt, rows * n), Buf::zeros(Dt::F32, rows));
            let args = [
                bx.ptr(),
                bw.ptr(),
                bdy.ptr(),
                dx.ptr(),
                rs.ptr(),
                Arg::I32(n32),
                Arg::F32(eps),
            ];
            run("rms_norm_bwd", dt, per_row(rows, n), &args);
            let (geometry, chunk) = launch::rms_norm_dw(rows, n);
            let (mut acc, mut dw) = (Buf::zeros(Dt::F32, n), Buf::zeros(dt, n));
            let args = [
                bx.ptr(),
                bdy.ptr(),
                rs.ptr(),
                acc.ptr(),
                Arg::I32(rows as i32),
                Arg::I32(n32),
                Arg::I32(chunk as i32),
            ];
            run("rms_norm_dw", dt, geometry, &args);
            let args = [acc.ptr(), dw.ptr(), Arg::I32(n32)];
            run("cast_from_f32", dt, per_elem(n), &args);

            let loss = (want * tensor(&dy, &[rows, n])).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let gx = grads.get(xv.as_tensor()).unwrap();
            let gw = grads.get(wv.as_tensor()).unwrap();
            assert_close("rms_norm dx", dt, &dx.values(), &flat(gx));
            assert_close("rms_norm dw", dt, &dw.values(), &flat(gw));
            assert_close("rms_norm dw accumulator", Dt::F32, &acc.values(), &flat(gw));
        }
    }
}

#[test]
fn rope_and_its_inverse_match_the_reference_and_its_gradient() {
    let mut rng = Lcg(2);
    // cos and sin have more positions (7) than the sequence (5), as the model's tables do.
    let (b, h, seq, d, cap) = (2, 3, 5, 8, 7);
    let half = d / 2;
    let len = b * h * seq * d;
    for dt in DTS {
        let x = seen(dt, &rng.uniform(len, -2.0, 2.0));
        let dy = seen(dt, &rng.uniform(len, -1.0, 1.0));
        let angles: Vec<f32> = (0..cap * half)
            .map(|k| (k / half) as f32 * 0.3f32.powi((k % half) as i32))
            .collect();
        let cos = seen(dt, &angles.iter().map(|a| a.cos()).collect::<Vec<_>>());
        let sin = seen(dt, &angles.iter().map(|a| a.sin()).collect::<Vec<_>>());
        let (mut bc, mut bs) = (Buf::of(dt, &cos), Buf::of(dt, &sin));
        let mut rotate = |input: &[f32], sign: f32| {
            let (mut bi, mut out) = (Buf::of(dt, input), Buf::zeros(dt, len));
            let args = [
                bi.ptr(),
                bc.ptr(),
                bs.ptr(),
                out.ptr(),
                Arg::U64((len / 2) as u64),
                Arg::I32(seq as i32),
                Arg::I32(half as i32),
                Arg::F32(sign),
            ];
            run("rope", dt, per_elem(len / 2), &args);
            out.values()
        };
        let (y, dx) = (rotate(&x, 1.0), rotate(&dy, -1.0));

        let xv = Var::from_tensor(&tensor(&x, &[b, h, seq, d])).unwrap();
        let (ct, st) = (tensor(&cos, &[cap, half]), tensor(&sin, &[cap, half]));
        let want = reference::rope(xv.as_tensor(), &ct, &st).unwrap();
        assert_close("rope", dt, &y, &flat(&want));
        let loss = (want * tensor(&dy, &[b, h, seq, d]))
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        assert_close(
            "rope backward",
            dt,
            &dx,
            &flat(grads.get(xv.as_tensor()).unwrap()),
        );
    }
}

#[test]
fn swiglu_and_its_gradients_match_the_reference() {
    let mut rng = Lcg(3);
    // 1000 elements: four blocks of 256, the last one partly idle.
    let len = 1000;
    for dt in DTS {
        let g = seen(dt, &rng.uniform(len, -4.0, 4.0));
        let u = seen(dt, &rng.uniform(len, -2.0, 2.0));
        let dy = seen(dt, &rng.uniform(len, -1.0, 1.0));
        let (mut bg, mut bu, mut bdy) = (Buf::of(dt, &g), Buf::of(dt, &u), Buf::of(dt, &dy));
        let mut y = Buf::zeros(dt, len);
        let args = [bg.ptr(), bu.ptr(), y.ptr(), Arg::U64(len as u64)];
        run("swiglu_fwd", dt, per_elem(len), &args);
        let mut d = Buf::zeros(dt, 2 * len);
        let args = [bg.ptr(), bu.ptr(), bdy.ptr(), d.ptr(), Arg::U64(len as u64)];
        run("swiglu_bwd", dt, per_elem(len), &args);

        let gv = Var::from_tensor(&tensor(&g, &[len])).unwrap();
        let uv = Var::from_tensor(&tensor(&u, &[len])).unwrap();
        let want = reference::swiglu(gv.as_tensor(), uv.as_tensor()).unwrap();
        assert_close("swiglu", dt, &y.values(), &flat(&want));
        let loss = (want * tensor(&dy, &[len])).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let want_d = [
            flat(grads.get(gv.as_tensor()).unwrap()),
            flat(grads.get(uv.as_tensor()).unwrap()),
        ]
        .concat();
        assert_close("swiglu backward", dt, &d.values(), &want_d);
    }
}

/// Runs `softmax_fwd` on `x` (rows of `n`) with the mask `mask` read through `strides` as the
/// rows' (batch, head, query, key), and `softmax_bwd` on its output and `dy`.
#[allow(clippy::too_many_arguments)]
fn softmax_kernels(
    dt: Dt,
    x: &[f32],
    mask: &[f32],
    strides: [i64; 4],
    (n, heads, tq): (usize, usize, usize),
    scale: f32,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / n;
    let (mut bx, mut bm, mut y) = (Buf::of(dt, x), Buf::of(dt, mask), Buf::zeros(dt, x.len()));
    let mut args = vec![
        bx.ptr(),
        bm.ptr(),
        y.ptr(),
        Arg::I32(n as i32),
        Arg::F32(scale),
        Arg::I32(heads as i32),
        Arg::I32(tq as i32),
    ];
    args.extend(strides.map(Arg::I64));
    run("softmax_fwd", dt, per_row(rows, n), &args);
    let (mut bdy, mut dx) = (Buf::of(dt, dy), Buf::zeros(dt, x.len()));
    let args = [
        y.ptr(),
        bdy.ptr(),
        dx.ptr(),
        Arg::I32(n as i32),
        Arg::F32(scale),
    ];
    run("softmax_bwd", dt, per_row(rows, n), &args);
    (y.values(), dx.values())
}

/// The reference softmax of `scale * x + mask` (mask broadcast to x's shape) and the gradient
/// of `sum(softmax * dy)` with respect to x.
fn softmax_reference(
    x: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    dy: &Tensor,
) -> (Vec<f32>, Vec<f32>) {
    let xv = Var::from_tensor(x).unwrap();
    let z = (xv.as_tensor() * scale).unwrap();
    let z = match mask {
        Some(m) => z.broadcast_add(m).unwrap(),
        None => z,
    };
    let p = reference::softmax_last_dim(&z).unwrap();
    let loss = (&p * dy).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    (flat(&p), flat(grads.get(xv.as_tensor()).unwrap()))
}

#[test]
fn softmax_and_its_gradient_match_the_reference() {
    let mut rng = Lcg(4);
    let (rows, n) = (5, 300);
    for dt in DTS {
        let x = seen(dt, &rng.uniform(rows * n, -6.0, 6.0));
        let dy = seen(dt, &rng.uniform(rows * n, -1.0, 1.0));
        // A plain softmax reads one zero through all-zero strides, as the launcher passes it.
        let (y, dx) = softmax_kernels(dt, &x, &[0.0], [0; 4], (n, 1, 1), 1.0, &dy);
        let (want_y, want_dx) =
            softmax_reference(&tensor(&x, &[rows, n]), None, 1.0, &tensor(&dy, &[rows, n]));
        assert_close("softmax", dt, &y, &want_y);
        assert_close("softmax backward", dt, &dx, &want_dx);
    }
}

#[test]
fn attention_softmax_reads_a_broadcast_mask_through_its_strides() {
    let mut rng = Lcg(5);
    // Scores (batch, heads, tq, tk); the mask is (batch, 1, tq, tk), broadcast over heads by a
    // zero stride as the attention launcher passes it. It hides a growing prefix of keys per
    // query and every key of batch 1's first query (a row that must give zeros).
    let (b, h, tq, tk) = (2, 4, 3, 40);
    let scale = 0.35f32;
    let mut mask = vec![0f32; b * tq * tk];
    for bi in 0..b {
        for i in 0..tq {
            let hidden = if (bi, i) == (1, 0) { tk } else { 7 * i + bi };
            for j in 0..hidden {
                mask[(bi * tq + i) * tk + j] = f32::NEG_INFINITY;
            }
        }
    }
    let mt = tensor(&mask, &[b, 1, tq, tk]);
    let broadcast = mt.broadcast_as((b, h, tq, tk)).unwrap();
    let strides: Vec<i64> = broadcast.stride().iter().map(|&s| s as i64).collect();
    assert_eq!(strides[1], 0, "the mask is read through a zero head stride");
    let len = b * h * tq * tk;
    for dt in DTS {
        let x = seen(dt, &rng.uniform(len, -6.0, 6.0));
        let dy = seen(dt, &rng.uniform(len, -1.0, 1.0));
        let strides = [strides[0], strides[1], strides[2], strides[3]];
        let (y, dx) = softmax_kernels(dt, &x, &mask, strides, (tk, h, tq), scale, &dy);
        let (mut want_y, mut want_dx) = softmax_reference(
            &tensor(&x, &[b, h, tq, tk]),
            Some(&mt),
            scale.into(),
            &tensor(&dy, &[b, h, tq, tk]),
        );
        masked_rows_are_zero(&mut want_y, tk);
        masked_rows_are_zero(&mut want_dx, tk);
        assert!(want_y.iter().filter(|&&v| v == 0.0).count() >= h * tk);
        assert_close("masked softmax", dt, &y, &want_y);
        assert_close("masked softmax backward", dt, &dx, &want_dx);
    }
}

#[test]
fn log_softmax_gather_and_its_gradient_match_the_reference() {
    let mut rng = Lcg(6);
    // A vocabulary longer than the block; row 3's target lies outside it (NaN, not a read
    // past the row).
    let (rows, n) = (6, 1000);
    let targets: Vec<u32> = (0..rows as u32)
        .map(|r| (r * 337 + 11) % n as u32)
        .collect();
    let mut fwd_targets = targets.clone();
    fwd_targets[3] = n as u32;
    for dt in DTS {
        let x = seen(dt, &rng.uniform(rows * n, -8.0, 8.0));
        let g = rng.uniform(rows, -1.0, 1.0);
        let mut bx = Buf::of(dt, &x);
        let (mut bt, mut out) = (Buf::ids(&fwd_targets), Buf::zeros(Dt::F32, rows));
        let args = [bx.ptr(), bt.ptr(), out.ptr(), Arg::I32(n as i32)];
        run("log_softmax_gather_fwd", dt, per_row(rows, n), &args);
        let (mut bt, mut bg) = (Buf::ids(&targets), Buf::of(Dt::F32, &g));
        let mut dx = Buf::zeros(dt, rows * n);
        let args = [bx.ptr(), bt.ptr(), bg.ptr(), dx.ptr(), Arg::I32(n as i32)];
        run("log_softmax_gather_bwd", dt, per_row(rows, n), &args);

        let xv = Var::from_tensor(&tensor(&x, &[rows, n])).unwrap();
        let tt = Tensor::from_slice(&targets, rows, &Device::Cpu).unwrap();
        let want = reference::log_softmax_gather(xv.as_tensor(), &tt).unwrap();
        let mut want_fwd = flat(&want);
        want_fwd[3] = f32::NAN;
        // The log-probabilities are f32 whatever the logits' dtype.
        assert_close("log_softmax_gather", Dt::F32, &out.values(), &want_fwd);
        let loss = (want * tensor(&g, &[rows])).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let want_dx = flat(grads.get(xv.as_tensor()).unwrap());
        assert_close("log_softmax_gather backward", dt, &dx.values(), &want_dx);
    }
}

/// The kernels the tests above run, without their dtype suffix.
const TESTED: [&str; 11] = [
    "rms_norm_fwd",
    "rms_norm_bwd",
    "rms_norm_dw",
    "cast_from_f32",
    "rope",
    "swiglu_fwd",
    "swiglu_bwd",
    "softmax_fwd",
    "softmax_bwd",
    "log_softmax_gather_fwd",
    "log_softmax_gather_bwd",
];

#[test]
fn every_kernel_of_recap_cu_is_emulated_and_tested() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/recap.cu"))
            .unwrap();
    let mut declared: Vec<String> = source
        .split("extern \"C\" __global__ void ")
        .skip(1)
        .map(|rest| rest.split("_##S").next().unwrap().to_string())
        .collect();
    declared.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(
        declared, tested,
        "kernels of recap.cu against those tested here"
    );

    let mut buf = vec![0 as c_char; 4096];
    // SAFETY: the function writes at most `len` bytes, nul-ended.
    unsafe { (emu().kernels)(buf.as_mut_ptr(), buf.len()) };
    let listed = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let mut emulated: Vec<String> = listed.split(',').map(str::to_string).collect();
    emulated.sort();
    let mut want: Vec<String> = TESTED
        .iter()
        .flat_map(|k| [format!("{k}_f32"), format!("{k}_bf16")])
        .collect();
    want.sort();
    assert_eq!(emulated, want, "kernels the emulator runs");
}

#[test]
fn the_emulator_reports_what_a_gpu_would_not_run() {
    let n = 40;
    let x = vec![1f32; 2 * n];
    let (mut bx, mut bm, mut y) = (
        Buf::of(Dt::F32, &x),
        Buf::of(Dt::F32, &[0.0]),
        Buf::zeros(Dt::F32, 2 * n),
    );
    let mut args = vec![
        bx.ptr(),
        bm.ptr(),
        y.ptr(),
        Arg::I32(n as i32),
        Arg::F32(1.0),
        Arg::I32(1),
        Arg::I32(1),
    ];
    args.extend([Arg::I64(0); 4]);
    // A block that is not whole warps: the reductions' shuffles miss lanes.
    let partial = Geometry {
        grid: (2, 1, 1),
        block: (48, 1, 1),
    };
    let err = launch("softmax_fwd_f32", partial, &args).unwrap_err();
    assert!(err.contains("warp shuffle"), "{err}");
    // More threads per block than the hardware has.
    let wide = Geometry {
        grid: (2, 1, 1),
        block: (2048, 1, 1),
    };
    let err = launch("softmax_fwd_f32", wide, &args).unwrap_err();
    assert!(err.contains("launch geometry"), "{err}");
    assert!(launch("softmax_fwd_f32", per_row(2, n), &args).is_ok());
    let err = launch("no_such_kernel_f32", per_row(2, n), &args).unwrap_err();
    assert!(err.contains("no kernel named"), "{err}");

    // A kernel told of more elements than its output holds writes into the guard, and one
    // told of more than its input holds reads the guard's huge value.
    let short = swiglu_over_300(300, 290);
    assert_eq!(
        short.read().unwrap_err(),
        "the guard after the buffer was written"
    );
    let out = swiglu_over_300(290, 300).values();
    assert!(
        out[295].abs() > 1e30 && out[5].abs() < 1.0,
        "{} {}",
        out[295],
        out[5]
    );
}

/// `swiglu_fwd` told of 300 elements, with a gate of `gate` elements and an output of `out`.
fn swiglu_over_300(gate: usize, out: usize) -> Buf {
    let (mut g, mut u, mut y) = (
        Buf::of(Dt::F32, &vec![0.5; gate]),
        Buf::of(Dt::F32, &[0.5; 300]),
        Buf::zeros(Dt::F32, out),
    );
    let args = [g.ptr(), u.ptr(), y.ptr(), Arg::U64(300)];
    launch("swiglu_fwd_f32", per_elem(300), &args).unwrap();
    y
}
