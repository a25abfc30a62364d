#!/usr/bin/env bash
# Builds a minimal CUDA 13.0 toolkit from NVIDIA's PyPI wheels (no apt repository or network
# beyond PyPI needed) and prints the environment that `cargo build --features cuda` needs.
#
# Usage: eval "$(scripts/cuda-toolkit.sh)" && cargo build -p recap-runtime --features cuda ...
#
# Why: Debian's packaged toolkit is CUDA 11.8, whose nvcc cannot target compute capability 9.0
# (H100) and whose binaries need CUDA 11 libraries that current GPU machines lack. The wheels
# pinned below give nvcc, the headers (with CCCL), cuBLAS, cuRAND, NVRTC and the runtime for
# CUDA 13.0, matching drivers of the 580 series. The driver library libcuda.so is not among
# them, so the link uses an empty stub with the right soname and leaves the driver symbols
# unresolved. The linker drops that stub (--as-needed), so on the GPU machine the binaries run
# with the real driver preloaded (LD_PRELOAD=libcuda.so.1; docs/cuda.md).
#
# The toolkit goes to $RECAP_CUDA (default: .cache/cuda13 in the repository root, git-ignored).
# Binaries built this way run on a machine with a CUDA 13 driver and libraries on its
# LD_LIBRARY_PATH (e.g. /usr/local/cuda/targets/x86_64-linux/lib).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${RECAP_CUDA:-$repo_root/.cache/cuda13}"
cap="${CUDA_COMPUTE_CAP:-90}"
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)

cu="$root/x/nvidia/cu13"
if [ ! -x "$cu/nvvm/bin/cicc" ] || [ ! -f "$cu/include/nv/target" ]; then
  mkdir -p "$root/wheels" "$root/x"
  python3 -m pip download --quiet --no-deps -d "$root/wheels" "${wheels[@]}" >&2
  for w in "$root"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$root/x/"
  done
  chmod +x "$cu"/bin/* "$cu"/nvvm/bin/*
  (
    cd "$cu/lib"
    for f in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13; do
      ln -sf "$f" "${f%.13}"
    done
    ln -sf libcurand.so.10 libcurand.so
    printf 'void recap_cuda_stub(void) {}\n' > stub.c
    cc -shared -o libcuda.so -Wl,-soname,libcuda.so.1 stub.c
    rm stub.c
  )
  ln -sfn lib "$cu/lib64"
fi

cat <<ENV
export CUDA_ROOT="$cu"
export CUDA_PATH="$cu"
export PATH="$cu/bin:\$PATH"
export CUDA_COMPUTE_CAP=$cap
export RUSTFLAGS="-C link-arg=-Wl,--unresolved-symbols=ignore-all -L $cu/lib"
export CARGO_TARGET_DIR="\${CARGO_TARGET_DIR:-$repo_root/target/cuda}"
ENV
