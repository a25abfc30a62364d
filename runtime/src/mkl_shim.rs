//! Built only with the `mkl` feature: takes nothing, gives the `hgemm_` symbol that candle's MKL
//! bindings reference but Debian's MKL 2020.4 lacks, so the link succeeds. recap multiplies
//! f32 matrices on the CPU (half precision is slower there), so this half-precision GEMM is
//! never called; if it ever is, the process stops with a message rather than computing garbage.

use std::os::raw::{c_char, c_int};

/// Stands in for MKL's half-precision GEMM. Aborting is the only safe answer: unwinding across
/// an `extern "C"` boundary is not allowed, and returning would leave `c` unwritten.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn hgemm_(
    _transa: *const c_char,
    _transb: *const c_char,
    _m: *const c_int,
    _n: *const c_int,
    _k: *const c_int,
    _alpha: *const half::f16,
    _a: *const half::f16,
    _lda: *const c_int,
    _b: *const half::f16,
    _ldb: *const c_int,
    _beta: *const half::f16,
    _c: *mut half::f16,
    _ldc: *const c_int,
) {
    eprintln!(
        "recap: half-precision matrix multiply on the CPU is not available in the `mkl` build; \
         use f32 or bf16 compute on the CPU"
    );
    std::process::abort();
}
