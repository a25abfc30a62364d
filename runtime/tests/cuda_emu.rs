//! The CUDA kernels of `kernels/recap.cu`, run on the CPU by an emulator (`kernels/emu/emu.cpp`,
//! compiled here with the host's C++ compiler: every CUDA thread a fiber, warp shuffles and
//! barriers as rendezvous), at the launch geometry `ops::launch` gives the CUDA path, on shapes
//! that use one warp or several, leave idle lanes, stride over long rows and split the RMSNorm
//! weight gradient across blocks. The f32 kernels are checked against the reference
//! compositions of `ops::reference` (values, and gradients through candle's autograd); the bf16
//! kernels, which compute in f32 and round what they store, must give exactly the f32 kernels'
//! outputs on the same (bf16-valued) inputs, rounded to bf16. No GPU and no `cuda` feature are
//! needed. Not covered here (`tests/cuda.rs` covers them on a GPU): the driver, nvcc's code,
//! cuBLAS (attention's products) and the Rust launchers' own argument lists (the tests pass the
//! same ones, and the emulator checks their kinds against the kernels' parameter types).
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
    *const c_char,
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
    let kinds: String = args
        .iter()
        .map(|a| match a {
            Arg::Ptr(_) => 'p',
            Arg::I32(_) => 'i',
            Arg::F32(_) => 'f',
            Arg::U64(_) => 'u',
            Arg::I64(_) => 'l',
        })
        .collect();
    let kinds = CString::new(kinds).unwrap();
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
            kinds.as_ptr(),
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

/// `xs` rounded to bf16: the tests' inputs, which f32 and bf16 kernels then see alike.
fn bf16_valued(xs: &[f32]) -> Vec<f32> {
    xs.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// A small deterministic generator (64-bit LCG), uniform in [lo, hi), rounded to bf16.
struct Lcg(u64);

impl Lcg {
    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        let xs: Vec<f32> = (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect();
        bf16_valued(&xs)
    }
}

fn tensor(xs: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(xs, shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// An f32 kernel's output equals the reference's to within f32 rounding: NaN where the
/// reference is, and elsewhere within 1e-4 relative plus 1e-5 of the largest |want| (an element
/// that is a difference of larger terms carries their rounding).
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want
        .iter()
        .filter(|w| w.is_finite())
        .fold(1e-3f32, |m, w| m.max(w.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            (g - w).abs() <= 1e-5 * scale + 1e-4 * w.abs()
        };
        assert!(ok, "{what} element {i}: got {g}, want {w}");
    }
}

/// A bf16 kernel's output, stored as `stored`, is the f32 kernel's output on the same inputs as
/// the bf16 kernel would store it: bit for bit (NaN for NaN), since both compute in f32 alike.
fn assert_rounded(what: &str, stored: Dt, bf16_out: &[f32], f32_out: &[f32]) {
    let want = match stored {
        Dt::Bf16 => bf16_valued(f32_out),
        _ => f32_out.to_vec(),
    };
    assert_eq!(bf16_out.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in bf16_out.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what} (bf16 kernel) element {i}: got {g}, the f32 kernel's rounded {w}"
        );
    }
}

/// What a test's kernels give for one dtype: each output, the dtype it is stored in, and its
/// elements.
type Outputs = Vec<(&'static str, Dt, Vec<f32>)>;

/// Runs `kernels` in f32 and in bf16: the f32 outputs against `reference` (in order), the bf16
/// ones against the f32 ones.
fn check_both(reference: &[Vec<f32>], kernels: impl Fn(Dt) -> Outputs) {
    let f32_outs = kernels(Dt::F32);
    assert_eq!(f32_outs.len(), reference.len());
    for ((what, _, got), want) in f32_outs.iter().zip(reference) {
        assert_close(what, got, want);
    }
    for ((what, stored, got), (_, _, f32_got)) in kernels(Dt::Bf16).iter().zip(&f32_outs) {
        assert_rounded(what, *stored, got, f32_got);
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

#[test]
fn rms_norm_and_its_gradients_match_the_reference() {
    let eps = 1e-6f32;
    let mut rng = Lcg(1);
    // Rows longer than the block (300 over 256 threads), one warp with idle lanes (7 of 32),
    // idle lanes over two warps (40 of 64), and rows split into three chunks for the weight
    // gradient (150 rows).
    for (rows, n) in [(4, 300), (5, 7), (3, 40), (150, 40)] {
        let x = rng.uniform(rows * n, -2.0, 2.0);
        let w = rng.uniform(n, 0.5, 1.5);
        let dy = rng.uniform(rows * n, -1.0, 1.0);
        let xv = Var::from_tensor(&tensor(&x, &[rows, n])).unwrap();
        let wv = Var::from_tensor(&tensor(&w, &[n])).unwrap();
        let y = reference::rms_norm(xv.as_tensor(), wv.as_tensor(), eps.into()).unwrap();
        let loss = (&y * tensor(&dy, &[rows, n])).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gw = flat(grads.get(wv.as_tensor()).unwrap());
        let reference = [
            flat(&y),
            flat(grads.get(xv.as_tensor()).unwrap()),
            gw.clone(),
            gw,
        ];
        check_both(&reference, |dt| {
            let (mut bx, mut bw, mut bdy) = (Buf::of(dt, &x), Buf::of(dt, &w), Buf::of(dt, &dy));
            let mut y = Buf::zeros(dt, rows * n);
            let n32 = n as i32;
            let args = [bx.ptr(), bw.ptr(), y.ptr(), Arg::I32(n32), Arg::F32(eps)];
            run("rms_norm_fwd", dt, per_row(rows, n), &args);
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
            vec![
                ("rms_norm", dt, y.values()),
                ("rms_norm dx", dt, dx.values()),
                ("rms_norm dw", dt, dw.values()),
                ("rms_norm dw accumulator", Dt::F32, acc.values()),
            ]
        });
    }
}

#[test]
fn rope_and_its_inverse_match_the_reference_and_its_gradient() {
    let mut rng = Lcg(2);
    // cos and sin have more positions (7) than the sequence (5), as the model's tables do; 960
    // pairs are four blocks.
    let (b, h, seq, d, cap) = (2, 3, 5, 64, 7);
    let half = d / 2;
    let len = b * h * seq * d;
    let x = rng.uniform(len, -2.0, 2.0);
    let dy = rng.uniform(len, -1.0, 1.0);
    let angles: Vec<f32> = (0..cap * half)
        .map(|k| (k / half) as f32 * 0.8f32.powi((k % half) as i32))
        .collect();
    let cos = bf16_valued(&angles.iter().map(|a| a.cos()).collect::<Vec<_>>());
    let sin = bf16_valued(&angles.iter().map(|a| a.sin()).collect::<Vec<_>>());

    let xv = Var::from_tensor(&tensor(&x, &[b, h, seq, d])).unwrap();
    let (ct, st) = (tensor(&cos, &[cap, half]), tensor(&sin, &[cap, half]));
    let y = reference::rope(xv.as_tensor(), &ct, &st).unwrap();
    let loss = (&y * tensor(&dy, &[b, h, seq, d]))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let reference = [flat(&y), flat(grads.get(xv.as_tensor()).unwrap())];
    check_both(&reference, |dt| {
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
        vec![
            ("rope", dt, rotate(&x, 1.0)),
            ("rope backward", dt, rotate(&dy, -1.0)),
        ]
    });
}

#[test]
fn swiglu_and_its_gradients_match_the_reference() {
    let mut rng = Lcg(3);
    // 1000 elements: four blocks of 256, the last one partly idle.
    let len = 1000;
    let g = rng.uniform(len, -4.0, 4.0);
    let u = rng.uniform(len, -2.0, 2.0);
    let dy = rng.uniform(len, -1.0, 1.0);
    let gv = Var::from_tensor(&tensor(&g, &[len])).unwrap();
    let uv = Var::from_tensor(&tensor(&u, &[len])).unwrap();
    let y = reference::swiglu(gv.as_tensor(), uv.as_tensor()).unwrap();
    let loss = (&y * tensor(&dy, &[len])).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let d = [
        flat(grads.get(gv.as_tensor()).unwrap()),
        flat(grads.get(uv.as_tensor()).unwrap()),
    ]
    .concat();
    check_both(&[flat(&y), d], |dt| {
        let (mut bg, mut bu, mut bdy) = (Buf::of(dt, &g), Buf::of(dt, &u), Buf::of(dt, &dy));
        let mut y = Buf::zeros(dt, len);
        let args = [bg.ptr(), bu.ptr(), y.ptr(), Arg::U64(len as u64)];
        run("swiglu_fwd", dt, per_elem(len), &args);
        let mut d = Buf::zeros(dt, 2 * len);
        let args = [bg.ptr(), bu.ptr(), bdy.ptr(), d.ptr(), Arg::U64(len as u64)];
        run("swiglu_bwd", dt, per_elem(len), &args);
        vec![
            ("swiglu", dt, y.values()),
            ("swiglu backward", dt, d.values()),
        ]
    });
}

/// How `softmax_fwd` reads its mask: the mask's elements, the strides of the rows' (batch,
/// head, query, key) into them, and the rows' heads and queries per head.
struct Masking<'a> {
    mask: &'a [f32],
    strides: [i64; 4],
    heads: usize,
    tq: usize,
}

/// `softmax_fwd` in `dt` over rows of `n` of `x`.
fn softmax_fwd(dt: Dt, x: &[f32], n: usize, m: &Masking<'_>, scale: f32) -> Vec<f32> {
    let (mut bx, mut bm, mut y) = (Buf::of(dt, x), Buf::of(dt, m.mask), Buf::zeros(dt, x.len()));
    let mut args = vec![
        bx.ptr(),
        bm.ptr(),
        y.ptr(),
        Arg::I32(n as i32),
        Arg::F32(scale),
        Arg::I32(m.heads as i32),
        Arg::I32(m.tq as i32),
    ];
    args.extend(m.strides.map(Arg::I64));
    run("softmax_fwd", dt, per_row(x.len() / n, n), &args);
    y.values()
}

/// `softmax_bwd` in `dt` from the output `y` and its gradient `dy`, rows of `n`.
fn softmax_bwd(dt: Dt, y: &[f32], dy: &[f32], n: usize, scale: f32) -> Vec<f32> {
    let (mut by, mut bdy, mut dx) = (Buf::of(dt, y), Buf::of(dt, dy), Buf::zeros(dt, y.len()));
    let args = [
        by.ptr(),
        bdy.ptr(),
        dx.ptr(),
        Arg::I32(n as i32),
        Arg::F32(scale),
    ];
    run("softmax_bwd", dt, per_row(y.len() / n, n), &args);
    dx.values()
}

/// Checks both softmax kernels on `x` (viewed as `shape`, rows of its last dimension) with the
/// mask `mt` as the kernel reads it through `m`: in f32, against the reference softmax of
/// `scale * x + mask` and its gradient (rows the mask hides entirely give zeros); in bf16,
/// against the f32 kernels on the same inputs (the backward's `y` being the bf16 forward's
/// output for both).
fn check_softmax(
    x: &[f32],
    dy: &[f32],
    shape: &[usize],
    mt: Option<&Tensor>,
    m: &Masking<'_>,
    scale: f32,
) {
    let n = *shape.last().unwrap();
    let xv = Var::from_tensor(&tensor(x, shape)).unwrap();
    let z = (xv.as_tensor() * f64::from(scale)).unwrap();
    let z = match mt {
        Some(mt) => z.broadcast_add(mt).unwrap(),
        None => z,
    };
    let p = reference::softmax_last_dim(&z).unwrap();
    let loss = (&p * tensor(dy, shape)).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let (mut want_y, mut want_dx) = (flat(&p), flat(grads.get(xv.as_tensor()).unwrap()));
    masked_rows_are_zero(&mut want_y, n);
    masked_rows_are_zero(&mut want_dx, n);

    let y32 = softmax_fwd(Dt::F32, x, n, m, scale);
    assert_close("softmax", &y32, &want_y);
    let dx32 = softmax_bwd(Dt::F32, &y32, dy, n, scale);
    assert_close("softmax backward", &dx32, &want_dx);
    let y16 = softmax_fwd(Dt::Bf16, x, n, m, scale);
    assert_rounded("softmax", Dt::Bf16, &y16, &y32);
    let dx16 = softmax_bwd(Dt::Bf16, &y16, dy, n, scale);
    let dx32 = softmax_bwd(Dt::F32, &y16, dy, n, scale);
    assert_rounded("softmax backward", Dt::Bf16, &dx16, &dx32);
}

#[test]
fn softmax_and_its_gradient_match_the_reference() {
    let mut rng = Lcg(4);
    // Rows longer than the block, and rows of one warp with idle lanes. A plain softmax reads
    // one zero through all-zero strides, as the launcher passes it.
    for (rows, n) in [(5, 300), (6, 7)] {
        let x = rng.uniform(rows * n, -6.0, 6.0);
        let dy = rng.uniform(rows * n, -1.0, 1.0);
        let plain = Masking {
            mask: &[0.0],
            strides: [0; 4],
            heads: 1,
            tq: 1,
        };
        check_softmax(&x, &dy, &[rows, n], None, &plain, 1.0);
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
    // The same mask stored keys-major and read through a transposed view: a key stride of tq.
    let stored_t = flat(&mt.transpose(2, 3).unwrap().contiguous().unwrap());
    let transposed = tensor(&stored_t, &[b, 1, tk, tq]).transpose(2, 3).unwrap();
    let len = b * h * tq * tk;
    let x = rng.uniform(len, -6.0, 6.0);
    let dy = rng.uniform(len, -1.0, 1.0);
    for (view, elems) in [(&mt, &mask), (&transposed, &stored_t)] {
        let broadcast = view.broadcast_as((b, h, tq, tk)).unwrap();
        let st: Vec<i64> = broadcast.stride().iter().map(|&s| s as i64).collect();
        assert_eq!(st[1], 0, "the mask is read through a zero head stride");
        let m = Masking {
            mask: elems,
            strides: [st[0], st[1], st[2], st[3]],
            heads: h,
            tq,
        };
        check_softmax(&x, &dy, &[b, h, tq, tk], Some(view), &m, scale);
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
    let x = rng.uniform(rows * n, -8.0, 8.0);
    let g = rng.uniform(rows, -1.0, 1.0);
    let xv = Var::from_tensor(&tensor(&x, &[rows, n])).unwrap();
    let tt = Tensor::from_slice(&targets, rows, &Device::Cpu).unwrap();
    let lp = reference::log_softmax_gather(xv.as_tensor(), &tt).unwrap();
    let mut want = flat(&lp);
    want[3] = f32::NAN;
    let loss = (&lp * tensor(&g, &[rows])).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let reference = [want, flat(grads.get(xv.as_tensor()).unwrap())];
    check_both(&reference, |dt| {
        let mut bx = Buf::of(dt, &x);
        let (mut bt, mut out) = (Buf::ids(&fwd_targets), Buf::zeros(Dt::F32, rows));
        let args = [bx.ptr(), bt.ptr(), out.ptr(), Arg::I32(n as i32)];
        run("log_softmax_gather_fwd", dt, per_row(rows, n), &args);
        let (mut bt, mut bg) = (Buf::ids(&targets), Buf::of(Dt::F32, &g));
        let mut dx = Buf::zeros(dt, rows * n);
        let args = [bx.ptr(), bt.ptr(), bg.ptr(), dx.ptr(), Arg::I32(n as i32)];
        run("log_softmax_gather_bwd", dt, per_row(rows, n), &args);
        // The log-probabilities are f32 whatever the logits' dtype.
        vec![
            ("log_softmax_gather", Dt::F32, out.values()),
            ("log_softmax_gather backward", dt, dx.values()),
        ]
    });
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
    // The emulator fills these two (block_sum's and block_max's partial results) with garbage
    // before every launch; a new shared array must be added to its `poison_shared`.
    assert_eq!(
        source.matches("__shared__").count(),
        2,
        "recap.cu's shared arrays against those the emulator poisons"
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
    // An argument of the wrong width: the heads as a 64-bit integer where the kernel takes int.
    let mut wrong = args.clone();
    wrong[5] = Arg::U64(1);
    let err = launch("softmax_fwd_f32", per_row(2, n), &wrong).unwrap_err();
    assert!(err.contains("\"pppifuillll\""), "{err}");
    // Kernels of the emulator's own that break a rule each (emu.cpp, `broken`).
    let mut out = Buf::zeros(Dt::F32, 64);
    let block = Geometry {
        grid: (1, 1, 1),
        block: (64, 1, 1),
    };
    for (kernel, says) in [
        ("broken_different_barriers", "different barriers"),
        ("broken_barrier_after_exit", "after 32 others have exited"),
        ("broken_different_shuffles", "different shuffles"),
    ] {
        let err = launch(kernel, block, &[out.ptr()]).unwrap_err();
        assert!(err.contains(says), "{kernel}: {err}");
    }

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
