#!/usr/bin/env bash
# Issue 13's CPU benchmark: GRPO on SmolLM2-135M (2 prompts x 4 completions x 32 new tokens,
# k3 KL to a frozen reference, AdamW), recap (pipelines/bench/cpu-smollm2.recap) against TRL 1.16
# (scripts/bench/trl_grpo.py) on the same weights, the runs alternated ROUNDS times; prints one
# table row per run and the ranges.
#
# Usage: scripts/bench/cpu-smollm2.sh [ROUNDS] [STEPS]      (defaults 3 and 4)
#   RECAPC   the recapc binary (default: target/release/recapc; build with cargo build --release)
#   PYTHON   a python with TRL 1.16, transformers and torch (default: python3)
#   RECAP_CACHE  where scripts/fetch-models.sh put the GGUF (default .cache/models); the HF
#            directory both systems load is imported from it once, into smollm2-135m-hf beside it
#
# Median seconds per step leave the first step out (warm-up). Peak RSS is the process's
# high-water mark (/usr/bin/time for recap, getrusage for TRL). Time both systems on an idle
# machine or compare only the ratios of alternated runs.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
rounds="${1:-3}"
steps="${2:-4}"
recapc="${RECAPC:-$repo/target/release/recapc}"
python="${PYTHON:-python3}"
cache="${RECAP_CACHE:-$repo/.cache/models}"
gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
hf="$cache/smollm2-135m-hf"
data="$repo/../shared/bench/fixture-tiny/train.jsonl"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

[[ -x "$recapc" ]] || { echo "no recapc at $recapc (cargo build --release)" >&2; exit 1; }
[[ -f "$gguf" ]] || { echo "no $gguf (scripts/fetch-models.sh)" >&2; exit 1; }
[[ -f "$data" ]] || { echo "no $data" >&2; exit 1; }
if [[ ! -f "$hf/model.safetensors" ]]; then
    "$recapc" import gguf "$gguf" --out "$hf" >/dev/null
fi

# Prints "median_s peak_rss_mb gen_tokens_per_step" of one recap run.
run_recap() {
    local out="$work/recap-$1"
    /usr/bin/time -f "%M" -o "$work/rss" "$recapc" run "$repo/pipelines/bench/cpu-smollm2.recap" \
        --set model="$hf" --set steps="$steps" --out "$out" >/dev/null 2>"$work/recap.err" ||
        { cat "$work/recap.err" >&2; exit 1; }
    python3 - "$out/metrics.jsonl" "$(cat "$work/rss")" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r["seconds"] for r in rows][1:]
tokens = [r["generated_tokens"] for r in rows][1:]
print(f"{statistics.median(steps):.3f} {int(sys.argv[2]) / 1000:.0f} {statistics.mean(tokens):.1f}")
PY
}

# The same three figures of one TRL run.
run_trl() {
    "$python" "$repo/scripts/bench/trl_grpo.py" --model "$hf" --data "$data" --prompts 2 \
        --completions 4 --new-tokens 32 --steps "$steps" --warmup 1 2>"$work/trl.err" |
        tail -1 >"$work/trl.json" || { cat "$work/trl.err" >&2; exit 1; }
    python3 - "$work/trl.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['median_step_s']:.3f} {r['peak_rss_mb']:.0f} {r['gen_tokens_per_step']:.1f}")
PY
}

printf "| round | system | median s/step | peak RSS MB | generated tokens/step |\n|---|---|---|---|---|\n"
: >"$work/all"
for round in $(seq 1 "$rounds"); do
    for system in recap trl; do
        read -r s rss tok < <("run_$system" "$round")
        printf "| %s | %s | %s | %s | %s |\n" "$round" "$system" "$s" "$rss" "$tok"
        echo "$system $s $rss" >>"$work/all"
    done
done
python3 - "$work/all" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
def rng(system, col):
    xs = [float(r[col]) for r in rows if r[0] == system]
    return min(xs), max(xs)
rs, ts = rng("recap", 1), rng("trl", 1)
rm, tm = rng("recap", 2), rng("trl", 2)
print(f"\nrecap {rs[0]:.2f}-{rs[1]:.2f} s/step, {rm[0]:.0f}-{rm[1]:.0f} MB; "
      f"TRL {ts[0]:.2f}-{ts[1]:.2f} s/step, {tm[0]:.0f}-{tm[1]:.0f} MB")
pairs = [(float(a[1]), float(b[1]), float(a[2]), float(b[2]))
         for a, b in zip(rows[0::2], rows[1::2])]
print("per round, TRL / recap step time: " + ", ".join(f"{t / r:.2f}x" for r, t, _, _ in pairs))
print("per round, recap / TRL peak RSS: " + ", ".join(f"{rm / tm:.2f}" for _, _, rm, tm in pairs))
PY
