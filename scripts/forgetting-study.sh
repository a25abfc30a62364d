#!/usr/bin/env bash
# The forgetting study of pipelines/forgetting/: for every seed, one SFT warm-up, then every
# variant's RL run from the warm-up's weights; then one table over variants and seeds.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/forgetting-study.sh [--quick | --ci] [--jobs N] [--out DIR]

Runs pipelines/forgetting/: for each seed, the SFT warm-up (warmup.recap) once, then each
variant (reasoning-only, lwf, uniform, proportional, coreset, recap, recap-sum) from the
warm-up's final weights. Run directories follow the layout `recapc compare` groups by:

  DIR/<variant>/seed-<N>/     one RL run (plan.json, metrics.jsonl, final/)
  DIR/warmup/seed-<N>/        the warm-up of seed N; in the table, its one probe is the
                              skills every variant of that seed starts RL from
  DIR/results.md              the table of `recapc compare`, baseline reasoning-only

Modes:
  (none)    all 7 variants x 5 seeds, 1000 RL steps each
  --quick   all 7 variants x 3 seeds, 1000 RL steps each
  --ci      reasoning-only and recap, 1 seed, 40 RL steps (an end-to-end smoke test)

Options:
  --jobs N  runs at a time (default 2)
  --out DIR where the runs go (default runs/forgetting-study, or ...-quick / ...-ci)
  -h, --help

Environment: RECAPC names the recapc binary (default: recapc on PATH, else
target/release/recapc). Extra settings for every run: RECAP_SET="lr=2e-3 recap_t=1".
EOF
}

mode=full
jobs=2
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --ci) mode=ci ;;
    --jobs)
      [ $# -ge 2 ] || { echo "error: --jobs needs a number" >&2; exit 2; }
      jobs="$2"
      shift
      ;;
    --out)
      [ $# -ge 2 ] || { echo "error: --out needs a directory" >&2; exit 2; }
      out="$2"
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case "$jobs" in
  '' | *[!0-9]* | 0) echo "error: --jobs needs a positive number, got '$jobs'" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"
pipelines="$root/pipelines/forgetting"

recapc="${RECAPC:-}"
if [ -z "$recapc" ]; then
  if command -v recapc >/dev/null 2>&1; then
    recapc="$(command -v recapc)"
  elif [ -x "$root/target/release/recapc" ]; then
    recapc="$root/target/release/recapc"
  fi
fi
if [ -z "$recapc" ] || ! [ -x "$recapc" ]; then
  echo "error: recapc not found; build it with 'cargo build --release' or set RECAPC" >&2
  exit 1
fi

variants=(reasoning-only lwf uniform proportional coreset recap recap-sum)
seeds=(1 2 3 4 5)
sets=()
case "$mode" in
  quick) seeds=(1 2 3) ;;
  ci)
    variants=(reasoning-only recap)
    seeds=(1)
    sets=(--set rl_steps=40 --set probe_every=20)
    ;;
esac
warmup_sets=()
if [ "$mode" = ci ]; then
  warmup_sets=(--set warmup_steps=40)
fi
for kv in ${RECAP_SET:-}; do
  sets+=(--set "$kv")
done

suffix=""
[ "$mode" = full ] || suffix="-$mode"
out="${out:-runs/forgetting-study$suffix}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# One `recapc run`, its output in DIR/run.log; prints the log and fails when the run fails.
# Called in the background: a TERM to this subshell stops its recapc as well. `--overwrite`
# lets the run start beside its own log (and replace a run of an earlier study there); it
# removes only recap's own files, so the log stays.
run_one() {
  local pipeline="$1" dir="$2"
  shift 2
  mkdir -p "$dir"
  "$recapc" run "$pipelines/$pipeline.recap" --out "$dir" --overwrite --progress plain "$@" \
    >"$dir/run.log" 2>&1 &
  child=$!
  trap 'kill "$child" 2>/dev/null; exit 143' TERM INT
  if ! wait "$child"; then
    echo "error: $pipeline failed; its log, $dir/run.log:" >&2
    cat "$dir/run.log" >&2
    return 1
  fi
  echo "done: ${dir#"$out"/}"
}

pids=()
failed=0
# Interrupted, the script stops its runs too, so none keeps writing into DIR.
trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM

# Starts one run in the background, first waiting for the oldest when N are running.
launch() {
  if [ "${#pids[@]}" -ge "$jobs" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
  run_one "$@" &
  pids+=("$!")
}

# Waits for every run started; fails the script when any of them failed.
wait_all() {
  local pid
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
  done
  pids=()
  if [ "$failed" -ne 0 ]; then
    echo "error: a run failed (its log is above)" >&2
    exit 1
  fi
}

started=$(date +%s)
echo "forgetting study ($mode): ${#variants[@]} variants x ${#seeds[@]} seeds, $jobs at a time"
echo "recapc: $recapc"
echo "out: $out"

# The warm-ups first: every variant of a seed starts from its seed's warm-up.
for seed in "${seeds[@]}"; do
  launch warmup "$out/warmup/seed-$seed" --set "seed=$seed" "${warmup_sets[@]}"
done
wait_all

for seed in "${seeds[@]}"; do
  for variant in "${variants[@]}"; do
    launch "$variant" "$out/$variant/seed-$seed" --set "seed=$seed" \
      --set "init=$out/warmup/seed-$seed/final" "${sets[@]}"
  done
done
wait_all

runs_done=$(date +%s)
echo "runs: $((runs_done - started)) s wall time"

if "$recapc" compare --help >/dev/null 2>&1; then
  "$recapc" compare "$out"/*/seed-* --baseline reasoning-only --out "$out/results.md"
  echo "table: $out/results.md"
else
  echo "note: this recapc has no 'compare' command yet; skipped the table" \
    "(the probes are in $out/*/seed-*/metrics.jsonl)"
fi
echo "total: $(($(date +%s) - started)) s wall time"
