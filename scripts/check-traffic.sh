#!/usr/bin/env bash
# Counts, for one `check` of each `bench_check` pipeline, the instructions executed and the data
# the check fetches from memory, with valgrind's cachegrind simulating this development
# machine's caches (32 KiB L1 data cache, 32 MiB last-level cache). Unlike the times of the
# `bench_check` example, these counts do not move with the machine's load, so they say whether
# the work grows with the input (instructions) and whether its data still fits the cache
# (last-level data misses: each fills a 64-byte line from DRAM, for a read or a write;
# cachegrind does not simulate the write-backs of dirty lines, so traffic is at least this).
# Each figure is two checks in one process minus one: for instructions, one check without the
# start-up; for misses, one check after an identical one, as in a series of checks.
#
# Usage: scripts/check-traffic.sh [LINES...]   (default: 1000 10000)
# Needs valgrind; takes about a minute for the default sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "check-traffic: valgrind is not installed (Debian: apt-get install valgrind)" >&2
    exit 2
fi
sizes=("$@")
if [ ${#sizes[@]} -eq 0 ]; then
    sizes=(1000 10000)
fi
list=$(IFS=,; echo "${sizes[*]}")

cargo build --release --quiet -p recap-compiler --example bench_check --example timing
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin/examples/bench_check" --lines "$list" --runs 1 --keep "$work" >/dev/null

# One run of the example checking FILE K times; prints "instructions data_misses", or fails.
count() {
    local out
    out=$(valgrind --tool=cachegrind --cache-sim=yes --D1=32768,8,64 --LL=33554432,16,64 \
        --cachegrind-out-file="$work/cg.out" "$bin/examples/timing" "$1" "$2" 2>&1 >/dev/null |
        awk '/I *refs:/ { gsub(",", "", $4); ir = $4 }
             /LLd misses:/ { gsub(",", "", $4); ll = $4 }
             END { print ir, ll }')
    if [[ ! $out =~ ^[0-9]+\ [0-9]+$ ]]; then
        echo "check-traffic: valgrind gave no counts for $1 (run it by hand to see why)" >&2
        exit 1
    fi
    echo "$out"
}

printf '%8s %10s %14s %9s %12s %13s %10s\n' lines bytes instructions "per byte" "LLd misses" "per 1k lines" "MB filled"
for n in "${sizes[@]}"; do
    file="$work/bench-$n.recap"
    lines=$(wc -l <"$file")
    bytes=$(wc -c <"$file")
    one=$(count "$file" 1)
    two=$(count "$file" 2)
    read -r ir1 ll1 <<<"$one"
    read -r ir2 ll2 <<<"$two"
    # Bash's 64-bit arithmetic for the counts: awk's %d stops at 2^31 in some awks.
    ir=$((ir2 - ir1))
    ll=$((ll2 - ll1))
    printf '%8d %10d %14d %9s %12d %13s %10s\n' "$lines" "$bytes" "$ir" \
        "$(awk -v a="$ir" -v b="$bytes" 'BEGIN { printf "%.1f", a / b }')" "$ll" \
        "$(awk -v a="$ll" -v n="$lines" 'BEGIN { printf "%.0f", a / n * 1000 }')" \
        "$(awk -v a="$ll" 'BEGIN { printf "%.1f", a * 64 / 1e6 }')"
done
