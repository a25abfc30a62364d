#!/usr/bin/env bash
# Counts, for one `check` of each `bench-check` pipeline, the instructions executed and the data
# the check moves to and from memory, with valgrind's cachegrind simulating this development
# machine's caches (32 KiB L1 data cache, 32 MiB last-level cache). Unlike the times of
# `recapc bench-check`, these counts do not move with the machine's load, so they say whether
# the work grows with the input (instructions) and whether its data still fits the cache
# (last-level misses, each a 64-byte line read from or written to DRAM).
#
# Usage: scripts/check-traffic.sh [LINES...]   (default: 10000 100000)
# Needs valgrind; takes about a minute for the default sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "check-traffic: valgrind is not installed (Debian: apt-get install valgrind)" >&2
    exit 2
fi
sizes=("$@")
if [ ${#sizes[@]} -eq 0 ]; then
    sizes=(10000 100000)
fi
list=$(IFS=,; echo "${sizes[*]}")

cargo build --release --quiet --bin recapc
cargo build --release --quiet -p recap-compiler --example timing
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/recapc bench-check --lines "$list" --runs 1 --keep "$work" >/dev/null

# One run of the example checking FILE K times; prints "instructions ll_misses".
count() {
    valgrind --tool=cachegrind --cache-sim=yes --D1=32768,8,64 --LL=33554432,16,64 \
        --cachegrind-out-file="$work/cg.out" target/release/examples/timing "$1" "$2" 2>&1 \
        >/dev/null | awk '
            /I *refs:/ { gsub(",", "", $4); ir = $4 }
            /LL misses:/ { gsub(",", "", $4); ll = $4 }
            END { print ir, ll }'
}

printf '%8s %10s %14s %12s %12s %14s %12s\n' lines bytes instructions "per byte" "LL misses" "per 1k lines" "MB moved"
for n in "${sizes[@]}"; do
    file="$work/bench-$n.recap"
    lines=$(wc -l <"$file")
    bytes=$(wc -c <"$file")
    read -r ir1 ll1 < <(count "$file" 1)
    read -r ir2 ll2 < <(count "$file" 2)
    # Two checks minus one: a single check without the process's start-up.
    awk -v n="$lines" -v b="$bytes" -v ir=$((ir2 - ir1)) -v ll=$((ll2 - ll1)) 'BEGIN {
        printf "%8d %10d %14d %12.1f %12d %14.0f %12.1f\n", n, b, ir, ir / b, ll, ll / n * 1000, ll * 64 / 1e6 }'
done
