#!/usr/bin/env bash
# Packs the CUDA test binary, the TRL-parity example, the benchmark fixture and a check script
# into .cache/gpu (git-ignored), small enough to carry to a lent GPU machine that has no Rust
# toolchain: debug info stripped, binaries gzipped. On that machine, `bash .cache/gpu/check.sh`
# runs the CUDA tests (the model on CUDA and every CUDA kernel of runtime/kernels/ against its
# reference composition; the kernels' PTX is embedded in the test binary) and the TRL-parity
# workload on cuda:0.
#
# Usage (after building with the toolkit of scripts/cuda-toolkit.sh):
#   CARGO_TARGET_DIR=DIR cargo build -p recap-runtime --features cuda --test cuda --example trl_parity
#   scripts/gpu-bundle.sh DIR [FIXTURE]      # FIXTURE defaults to ../shared/bench/fixture-tiny
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:?usage: scripts/gpu-bundle.sh CARGO_TARGET_DIR [FIXTURE]}"
fixture="${2:-$repo_root/../shared/bench/fixture-tiny}"
out="$repo_root/.cache/gpu"

# The newest build of the `cuda` test; cargo names it cuda-<hash>.
test_bin="$(ls -t "$target"/debug/deps/cuda-* 2>/dev/null | grep -v '\.d$' | head -n 1 || true)"
example="$target/debug/examples/trl_parity"
[[ -n "$test_bin" && -x "$test_bin" ]] || { echo "no cuda test binary under $target/debug/deps" >&2; exit 1; }
[[ -x "$example" ]] || { echo "no trl_parity example at $example" >&2; exit 1; }
[[ -f "$fixture/config.json" ]] || { echo "no fixture at $fixture" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
cp "$test_bin" "$out/cuda_test"
cp "$example" "$out/trl_parity"
strip --strip-debug "$out/cuda_test" "$out/trl_parity"
gzip -f "$out/cuda_test" "$out/trl_parity"
cp -r "$fixture" "$out/fixture-tiny"
cat > "$out/check.sh" <<'CHECK'
#!/bin/bash
# GPU check: CUDA model and kernel tests, then the TRL-parity workload on cuda:0.
cd "$(dirname "$0")"
gunzip -f cuda_test.gz trl_parity.gz; chmod +x cuda_test trl_parity
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.used --format=csv
ldd ./cuda_test | grep -E 'not found|cublas|cudart|curand|nvrtc|libcuda'
echo "== cuda tests"
# Every kernel check prints its relative differences; the whole log is short enough to keep.
RECAP_FIXTURE_TINY=$PWD/fixture-tiny timeout 240 ./cuda_test --test-threads 1 --nocapture 2>&1 | tail -150
echo "== trl_parity cuda:0 (dev profile, 20 steps)"
timeout 150 ./trl_parity fixture-tiny 20 cuda:0 2>&1 | tail -15
CHECK
chmod +x "$out/check.sh"
du -sh "$out"
