//! Compiles the CUDA kernels of `kernels/` to PTX when the `cuda` feature is on; a CPU build
//! does nothing here, so it needs no CUDA toolkit.
//!
//! The PTX goes to `$OUT_DIR/recap.ptx`, which `src/ops/cuda.rs` embeds; candle's CUDA device
//! loads it once per device and the driver compiles it for the GPU it runs on. nvcc is taken
//! from `$CUDA_ROOT/bin` when set (as `scripts/cuda-toolkit.sh` sets it), else from `PATH`; the
//! PTX targets `CUDA_COMPUTE_CAP` (the same variable candle's kernels read), else compute
//! capability 8.0, the first with native bf16 arithmetic, whose PTX newer GPUs also run.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = match std::env::var_os("CUDA_ROOT") {
        Some(root) => PathBuf::from(root).join("bin").join("nvcc"),
        None => PathBuf::from("nvcc"),
    };
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let ptx = out.join("recap.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("kernels/recap.cu")
        .arg("-o")
        .arg(&ptx)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} to compile the CUDA kernels ({e}); \
                 eval \"$(scripts/cuda-toolkit.sh)\" provides one",
                nvcc.display()
            )
        });
    assert!(
        status.success(),
        "{} failed to compile kernels/recap.cu ({status})",
        nvcc.display()
    );
}
