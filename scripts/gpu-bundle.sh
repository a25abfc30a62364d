#!/usr/bin/env bash
# Packs everything the GPU checks of the open issues need into .cache/gpu (git-ignored), small
# enough to carry to a lent GPU machine that has no Rust toolchain and no network: recapc (built
# with `nccl`, which implies `cuda`), the CUDA and NCCL test binaries and the TRL-parity example
# (debug info stripped, xz-compressed), the benchmark fixture, the model configs and pipelines, TRL
# 1.16 and the wheels it needs that the machine lacks, the benchmark scripts and check.sh. On
# that machine `bash .cache/gpu/check.sh` runs every check in priority order, each under its
# own time limit, and writes its logs to $OUT (docs/cuda.md, "Checks run on a GPU").
#
# Usage (docs/cuda.md gives the whole sequence):
#   eval "$(scripts/cuda-toolkit.sh)"
#   eval "$(scripts/gpu-bundle.sh --link-env)"   # NCCL's library for the link (LIBRARY_PATH)
#   cargo build -p recapc -p recap-runtime --features recapc/nccl,recap-runtime/nccl \
#       --bin recapc --test cuda --test nccl --example trl_parity
#   scripts/gpu-bundle.sh "$CARGO_TARGET_DIR" [FIXTURE]   # FIXTURE: ../shared/bench/fixture-tiny
#
# Downloads, each pinned by version and sha256, go to caches outside the bundle: NCCL's wheel
# to $RECAP_NCCL (default .cache/nccl; only to link, never carried, as it is too large: the GPU
# machine has its own libnccl.so.2 in PyTorch's nvidia-nccl-cu13) and TRL's wheels to $RECAP_GPU_WHEELS
# (default .cache/gpu-wheels).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nccl_root="${RECAP_NCCL:-$repo_root/.cache/nccl}"
wheel_cache="${RECAP_GPU_WHEELS:-$repo_root/.cache/gpu-wheels}"

# NCCL 2.28.9 for CUDA 13, the version PyTorch 2.11 (cu130) pins, so the link sees the library
# the GPU machine loads. candle links cudarc with `dynamic-linking`, so a `nccl` build passes
# `-lnccl` to the linker, which needs a libnccl.so to exist even though the toolkit's flags
# leave unresolved symbols to load time.
nccl_wheel="nvidia_nccl_cu13-2.28.9-py3-none-manylinux_2_18_x86_64.whl"
nccl_sha256="e4553a30f34195f3fa1da02a6da3d6337d28f2003943aa0a3d247bbc25fefc42"

# TRL 1.16 and what it needs that the GPU machine's image lacks (device/KINDS.md lists the
# image's packages: torch, transformers, accelerate, pyarrow, pandas, fsspec, xxhash and the
# rest are there; datasets, dill and multiprocess are not). datasets 4.8.5 is the newest that
# accepts pyarrow >= 21 (5.x asks for 24) and huggingface-hub 1.x; dill and multiprocess are
# the newest its bounds allow.
trl_wheels=(
  "trl==1.16.0 --hash=sha256:c4726e139dd40e1a41661511c639c8a68416782b2e3e8c0befebd77bb7ba0396"
  "datasets==4.8.5 --hash=sha256:5079900781719c0e063a8efdd2cd95a31ad0c63209178669cd23cf1b926149ff"
  "dill==0.4.1 --hash=sha256:1e1ce33e978ae97fcfcff5638477032b801c46c7c65cf717f95fbc2248f79a9d"
  "multiprocess==0.70.19 --hash=sha256:3a56c0e85dd5025161bac5ce138dcac1e49174c7d8e74596537e729fd5c53c28"
)

# Prints the sha256 of a file.
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ "${1:-}" == "--link-env" ]]; then
  lib="$nccl_root/x/nvidia/nccl/lib"
  if [[ ! -f "$lib/libnccl.so.2" ]]; then
    mkdir -p "$nccl_root"
    if [[ ! -f "$nccl_root/$nccl_wheel" || "$(sha_of "$nccl_root/$nccl_wheel")" != "$nccl_sha256" ]]; then
      python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_18_x86_64 -d "$nccl_root" nvidia-nccl-cu13==2.28.9 >&2
    fi
    [[ "$(sha_of "$nccl_root/$nccl_wheel")" == "$nccl_sha256" ]] ||
      { echo "gpu-bundle.sh: $nccl_wheel does not have the pinned sha256" >&2; exit 1; }
    python3 -m zipfile -e "$nccl_root/$nccl_wheel" "$nccl_root/x/"
  fi
  ln -sf libnccl.so.2 "$lib/libnccl.so"
  echo "export LIBRARY_PATH=\"$lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}\""
  exit 0
fi

target="${1:?usage: scripts/gpu-bundle.sh --link-env | CARGO_TARGET_DIR [FIXTURE]}"
fixture="${2:-$repo_root/../shared/bench/fixture-tiny}"
out="$repo_root/.cache/gpu"

# The newest build of a test target; cargo names it NAME-<hash>.
newest_test() {
  find "$target/debug/deps" -maxdepth 1 -type f -executable -name "$1-*" -printf '%T@ %p\n' |
    sort -nr | head -n 1 | cut -d' ' -f2-
}
cuda_test="$(newest_test cuda)"
nccl_test="$(newest_test nccl)"
recapc="$target/debug/recapc"
example="$target/debug/examples/trl_parity"
for f in "$cuda_test" "$nccl_test" "$recapc" "$example"; do
  [[ -n "$f" && -x "$f" ]] || { echo "missing a binary under $target (see the usage above)" >&2; exit 1; }
done
[[ -f "$fixture/config.json" ]] || { echo "no fixture at $fixture" >&2; exit 1; }
# A recapc without NCCL would run check 3 on the single-process path alone and say nothing.
if ! nm -D --undefined-only "$recapc" | grep ncclCommInitRank >/dev/null; then
  echo "$recapc was not built with --features nccl" >&2
  exit 1
fi

mkdir -p "$wheel_cache"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 --require-hashes -d "$wheel_cache" \
  -r <(printf '%s\n' "${trl_wheels[@]}") >&2

rm -rf "$out"
mkdir -p "$out/bin" "$out/wheels" "$out/configs" "$out/pipelines/bench/data"
cp "$cuda_test" "$out/bin/cuda_test"
cp "$nccl_test" "$out/bin/nccl_test"
cp "$recapc" "$out/bin/recapc"
cp "$example" "$out/bin/trl_parity"
strip --strip-debug "$out"/bin/*
# xz, not gzip: gzipped, the four binaries are over the 64 MiB a call carries; xz packs their PTX
# text and code much better (the sizes are in docs/cuda.md).
xz -T0 -6 "$out"/bin/*
cp -r "$fixture" "$out/fixture-tiny"
chmod -R u+w "$out/fixture-tiny"
for spec in "${trl_wheels[@]}"; do
  name="${spec%%==*}"
  version="${spec#*==}"
  cp "$wheel_cache/${name}-${version%% *}-"*.whl "$out/wheels/"
done
cp "$repo_root"/configs/qwen2.5-{0.5b,1.5b,7b}.json "$out/configs/"
cp "$repo_root"/pipelines/bench/{gpu-qwen2.5-0.5b,gpu-qwen2.5-1.5b,gpu-qwen2.5-7b-lora,trl-parity}.recap \
  "$out/pipelines/bench/"
cp "$repo_root/pipelines/bench/data/prompts-128.jsonl" "$out/pipelines/bench/data/"
cp "$repo_root/scripts/bench/trl_grpo.py" "$repo_root/scripts/bench/gpu_summary.py" "$out/"
git -C "$repo_root" rev-parse HEAD >"$out/COMMIT" 2>/dev/null || true

cat >"$out/check.sh" <<'CHECK'
#!/bin/bash
# The GPU checks of the open issues, in priority order, each under its own time limit so that a
# hang cannot eat the others' time; the whole script ends within CHECK_BUDGET seconds (default
# 540) so that it fits one device call of 600 s. Logs go to $OUT (./out without it): check.log
# (everything), summary.md (the benchmark tables, rewritten after each run) and results.tar.gz
# (the small files the tables come from).
#   1. CUDA model and kernel tests; the TRL-parity workload on cuda:0 (issue 13).
#   2. The GRPO benchmark (issue 13 item 6): recap, then TRL 1.16 with transformers' generate, on
#      random-init Qwen2.5-0.5B and then 1.5B, the same shapes, BENCH_STEPS steps (default 3:
#      one warm-up and two timed) each, the card's memory sampled by nvidia-smi.
#   3. NCCL on one GPU (issue 17): the collective's own test in a world of one, then recapc
#      (built with `nccl`) with torchrun's variables for a world of one.
#   4. Memory, as time allows: the dry run's estimates for 0.5B and 1.5B (against 2.'s measured
#      peaks), then 7B LoRA's estimate and a one-step run's measured peak.
set -u
cd "$(dirname "$0")" || exit 1
here=$PWD
out=${OUT:-$here/out}
mkdir -p "$out"
exec > >(tee "$out/check.log") 2>&1
# The checks' own status lines go to fd 3, the log, even where a run's output is redirected.
exec 3>&1
budget=${CHECK_BUDGET:-540}
steps=${BENCH_STEPS:-3}
work=$(mktemp -d /tmp/gpu-check.XXXXXX)
mkdir -p "$work/bench" "$work/mem"

# Seconds left of the budget (SECONDS counts from the script's start).
left() { echo $((budget - SECONDS)); }

# bounded CAP KEEP CMD...: runs CMD under `timeout` for at most CAP seconds and never into the
# last KEEP seconds of the budget (kept for the checks after it); skipped under 20 s.
bounded() {
  local cap=$1 keep=$2 t rc
  shift 2
  t=$(($(left) - keep))
  ((t > cap)) && t=$cap
  if ((t < 20)); then
    echo "SKIPPED (${t} s left): $*" >&3
    return 125
  fi
  echo "-- [${SECONDS} s] limit ${t} s: $*" >&3
  timeout -k 10 "$t" "$@"
  rc=$?
  ((rc == 124 || rc == 137)) && echo "TIMED OUT after ${t} s: $*" >&3
  echo "-- [${SECONDS} s] rc=$rc" >&3
  return "$rc"
}

# sampled BASE CAP KEEP CMD...: `bounded`, with the card's memory.used (MiB) read once before
# into BASE.idle and every 200 ms during the run into BASE.mem.
sampled() {
  local base=$1 smi rc
  shift
  nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits >"$base.idle"
  nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$base.mem" 2>/dev/null &
  smi=$!
  bounded "$@"
  rc=$?
  kill "$smi" 2>/dev/null
  wait "$smi" 2>/dev/null
  # A skipped run measured nothing but the idle card.
  ((rc == 125)) && rm -f "$base.idle" "$base.mem"
  return "$rc"
}

summarise() {
  python3 gpu_summary.py "$work" >"$out/summary.md" 2>&1
}

# A recap run of PIPELINE into DIR (its log beside it), the run's weights removed afterwards
# (gigabytes of disk, and nothing checks them).
recap_run() {
  local dir=$1 cap=$2 keep=$3 pipeline=$4 rc
  shift 4
  sampled "$dir" "$cap" "$keep" ./bin/recapc run "$pipeline" --device cuda:0 --out "$dir" \
    --progress plain --samples-every 0 "$@" >"$dir.log" 2>&1
  rc=$?
  tail -n 25 "$dir.log"
  rm -rf "$dir/final" "$dir/checkpoints"
  return "$rc"
}

echo "== setup [$(date -u +%FT%TZ)] bundle of $(cat COMMIT 2>/dev/null)"
for f in bin/*.xz; do
  [ -e "$f" ] || continue
  # Python's lzma where the machine has no xz.
  xz -d -f "$f" 2>/dev/null ||
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], "wb"))' "$f"
  rm -f "$f"
done
chmod +x bin/*
nvidia-smi -i 0 --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$work/gpu.txt"
# NCCL comes from PyTorch's nvidia-nccl-cu13 on that machine (2.28.9 with torch 2.11, the
# version the binaries were linked against); the CUDA 13 libraries from its toolkit.
nccl_lib=$(python3 -c 'import nvidia.nccl as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)
if [ ! -f "$nccl_lib/libnccl.so.2" ]; then
  nccl_lib=$(find /usr /opt -name libnccl.so.2 2>/dev/null | head -n 1)
  nccl_lib=${nccl_lib%/*}
fi
cu13_lib=$(python3 -c 'import nvidia.cu13 as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/cuda/lib64:$nccl_lib:${cu13_lib:-}:${LD_LIBRARY_PATH:-}
# The binaries leave the driver's symbols (cu*) unresolved, and the linker dropped the toolkit
# script's empty libcuda stub (--as-needed: nothing resolved against it), so nothing they need
# loads libcuda.so.1 and their immediate binding fails at start ("undefined symbol:
# cuModuleUnload") unless the driver library is preloaded.
export LD_PRELOAD=libcuda.so.1${LD_PRELOAD:+:$LD_PRELOAD}
echo "NCCL from ${nccl_lib:-nowhere: no libnccl.so.2 found}"
for b in bin/*; do
  ldd "$b" | grep -E 'not found' | sed "s|^|$b: |"
done
ldd bin/recapc | grep -E 'nccl|cublas|cudart|curand|nvrtc|libcuda'
ldd -r bin/recapc 2>&1 | grep -m 5 'undefined symbol'
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site wheels/*.whl
PYTHONPATH=/tmp/site python3 -c 'import torch, transformers, trl, datasets; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "datasets", datasets.__version__)'

echo "== 1. CUDA tests [${SECONDS} s]"
# Every kernel check prints its relative differences; the whole log is short enough to keep.
RECAP_FIXTURE_TINY=$here/fixture-tiny bounded 150 0 ./bin/cuda_test --test-threads 1 --nocapture
echo "== 1. trl_parity cuda:0 (20 steps) [${SECONDS} s]"
bounded 60 0 ./bin/trl_parity fixture-tiny 20 cuda:0 2>&1 | tail -n 15

echo "== 2. GRPO benchmark, recap and TRL, ${steps} steps each [${SECONDS} s]"
for spec in gpu-qwen2.5-0.5b:16:120:150 gpu-qwen2.5-1.5b:8:150:180; do
  IFS=: read -r name micro recap_cap trl_cap <<<"$spec"
  config=configs/${name#gpu-}.json
  d=$work/bench/$name
  mkdir -p "$d"
  echo "-- $name: recap"
  recap_run "$d/recap" "$recap_cap" 90 "pipelines/bench/$name.recap" --set steps="$steps"
  summarise
  echo "-- $name: TRL"
  PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 sampled "$d/trl" "$trl_cap" 90 \
    python3 trl_grpo.py --config "$config" --tokenizer fixture-tiny --device cuda --dtype bf16 \
    --data pipelines/bench/data/prompts-128.jsonl --prompts 16 --completions 8 \
    --micro-batch "$micro" --new-tokens 256 --ignore-eos --steps "$steps" --warmup 1 \
    >"$d/trl.out" 2>"$d/trl.err"
  grep -v '^{' "$d/trl.err" | tail -n 15
  grep '^{' "$d/trl.err"
  cat "$d/trl.out"
  summarise
done
cat "$out/summary.md"

echo "== 3. NCCL in a world of one [${SECONDS} s]"
NCCL_DEBUG=INFO bounded 60 40 ./bin/nccl_test --test-threads 1 --nocapture
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "-- recapc (nccl build), WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port"
WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port NCCL_DEBUG=INFO \
  recap_run "$work/nccl-run" 60 10 pipelines/bench/trl-parity.recap \
  --set fixture="$here/fixture-tiny" --set data="$here/fixture-tiny/train.jsonl" --set steps=5
grep -c 'NCCL INFO' "$work/nccl-run.log" | sed 's/^/NCCL INFO lines in the recapc run: /'

echo "== 4. dry-run memory estimates against measured peaks [${SECONDS} s]"
for name in gpu-qwen2.5-0.5b gpu-qwen2.5-1.5b gpu-qwen2.5-7b-lora; do
  bounded 120 10 ./bin/recapc run "pipelines/bench/$name.recap" --device cuda:0 --dry-run \
    --progress plain >"$work/mem/$name.dry" 2>&1
  tail -n 8 "$work/mem/$name.dry"
done
echo "-- gpu-qwen2.5-7b-lora: one step"
recap_run "$work/mem/gpu-qwen2.5-7b-lora" 240 10 pipelines/bench/gpu-qwen2.5-7b-lora.recap --set steps=1
summarise

echo "== done [${SECONDS} s]"
(cd "$work" && find . -type f -size -4M ! -name '*.safetensors' -print0 |
  tar czf "$out/results.tar.gz" --null -T -)
cat "$out/summary.md"
# tee, behind the process substitution, writes the last lines after the script's own end.
sleep 1
CHECK
chmod +x "$out/check.sh"
du -sb "$out"
