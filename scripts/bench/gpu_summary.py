#!/usr/bin/env python3
"""Summarises the GPU checks' benchmark runs (scripts/gpu-bundle.sh writes check.sh, which
writes the files read here) as Markdown tables: per model, recap against TRL.

Usage: gpu_summary.py WORK

WORK/bench/MODEL/ holds one model's two runs:
  recap/metrics.jsonl   recapc's per-step metrics (`seconds`, `generated_tokens`, `time.rollout`)
  trl.err               trl_grpo.py's per-step JSON lines (`s`, `generate_s`, `gen_tokens`)
  trl.out               trl_grpo.py's final JSON line (when the run finished)
  SYSTEM.mem            memory.used samples of nvidia-smi (MiB, one a line) taken during the run
  SYSTEM.idle           memory.used just before the run (MiB)
WORK/mem/NAME.dry holds the output of `recapc run --dry-run` (the line with `(peak ~X MiB)`),
compared with the measured peak of WORK/bench/NAME/recap.* or of WORK/mem/NAME.*.

The first step of every run is a warm-up and left out. Generation tokens per second are the
tokens generated over the time spent generating (recap: the step's rollout phase; TRL: its
calls of `generate`). Peak GPU memory is the largest nvidia-smi sample above the idle reading
(what each process held on the card, allocator caches and CUDA context included), the same
measure for both systems; TRL's own `max_memory_allocated` is shown beside it. Missing or
partial runs (a check cut short by its time limit) are reported as such, never guessed.
"""

import json
import re
import statistics
import sys
from pathlib import Path


def json_lines(path):
    """The JSON objects of a file's lines that parse as objects; none if the file is missing."""
    rows = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    rows.append(value)
    return rows


def peak_mib(base):
    """The largest nvidia-smi sample of BASE.mem above BASE.idle, in MiB, or None."""
    mem, idle = Path(str(base) + ".mem"), Path(str(base) + ".idle")
    if not mem.is_file():
        return None
    samples = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", mem.read_text())]
    if not samples:
        return None
    floor = 0.0
    if idle.is_file():
        found = re.findall(r"\d+(?:\.\d+)?", idle.read_text())
        floor = float(found[0]) if found else 0.0
    return max(samples) - floor


def recap_run(d):
    """Timed steps of one recap run: (step seconds, generated tokens, rollout seconds)."""
    rows = json_lines(d / "recap" / "metrics.jsonl")
    return [
        (r["seconds"], r.get("generated_tokens", 0), (r.get("time") or {}).get("rollout", 0.0))
        for r in rows
        if "seconds" in r
    ]


def trl_run(d):
    """Timed steps of one TRL run, from its per-step lines (present even when it was cut)."""
    rows = [r for r in json_lines(d / "trl.err") if "step" in r and "s" in r]
    return [(r["s"], r.get("gen_tokens", 0), r.get("generate_s", 0.0)) for r in rows]


def figures(steps, warmup=1):
    """Median s/step and generation tokens/s after the warm-up, or None without timed steps."""
    timed = steps[warmup:]
    if not timed:
        return None
    gen_s = sum(s[2] for s in timed)
    return {
        "timed": len(timed),
        "median_s": statistics.median(s[0] for s in timed),
        "gen_tok_s": sum(s[1] for s in timed) / gen_s if gen_s > 0 else None,
        "tokens_per_step": statistics.mean(s[1] for s in timed),
    }


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def times(x):
    return "-" if x is None else f"{x:.2f}x"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def bench_table(work):
    out = []
    models = sorted(p for p in (work / "bench").glob("*") if p.is_dir())
    for d in models:
        recap, trl = recap_run(d), trl_run(d)
        r, t = figures(recap), figures(trl)
        trl_final = json_lines(d / "trl.out")
        alloc = trl_final[-1].get("peak_gpu_mb") if trl_final else None
        if alloc is None:
            # The last per-step line of a run cut short still has the allocator's peak so far.
            peaks = [x.get("peak_gpu_mb") for x in json_lines(d / "trl.err") if "peak_gpu_mb" in x]
            alloc = peaks[-1] if peaks else None
        rm, tm = peak_mib(d / "recap"), peak_mib(d / "trl")
        out.append(f"\n### {d.name}\n")
        out.append("| system | steps run (timed) | median s/step | generation tokens/s "
                   "| generated tokens/step | peak GPU MiB (nvidia-smi, above idle) "
                   "| allocator peak MB |")
        out.append("|---|---|---|---|---|---|---|")
        for name, steps, f, mem, al in (("recap", recap, r, rm, None), ("TRL", trl, t, tm, alloc)):
            if f is None:
                out.append(f"| {name} | {len(steps)} (0) | - | - | - | {fmt(mem, 0)} | "
                           f"{fmt(al, 0)} |")
            else:
                out.append(f"| {name} | {len(steps)} ({f['timed']}) | {f['median_s']:.3f} | "
                           f"{fmt(f['gen_tok_s'], 0)} | {f['tokens_per_step']:.0f} | "
                           f"{fmt(mem, 0)} | {fmt(al, 0)} |")
        step_x = ratio(t and t["median_s"], r and r["median_s"])
        gen_x = ratio(r and r["gen_tok_s"], t and t["gen_tok_s"])
        mem_x = ratio(rm, tm)
        out.append(f"\nTRL / recap step time: {times(step_x)} (target >= 2); recap / TRL "
                   f"generation tokens/s: {times(gen_x)} (target >= 2); recap / TRL peak GPU "
                   f"memory: {fmt(mem_x)} (target <= 1)")
    return out


def estimate_table(work):
    out = []
    dries = sorted((work / "mem").glob("*.dry")) if (work / "mem").is_dir() else []
    if not dries:
        return out
    out.append("\n### dry-run memory estimate against the measured peak\n")
    out.append("| model | estimated peak MiB | measured peak MiB (nvidia-smi, above idle) "
               "| estimate / measured |")
    out.append("|---|---|---|---|")
    for dry in dries:
        name = dry.stem
        found = re.findall(r"\(peak ~([0-9.]+) MiB\)", dry.read_text(errors="replace"))
        est = float(found[0]) if found else None
        measured = peak_mib(work / "bench" / name / "recap")
        if measured is None:
            measured = peak_mib(work / "mem" / name)
        out.append(f"| {name} | {fmt(est, 0)} | {fmt(measured, 0)} | "
                   f"{fmt(ratio(est, measured))} |")
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    work = Path(sys.argv[1])
    lines = ["## GPU benchmark: recap against TRL 1.16 (first step of each run left out)"]
    gpu = work / "gpu.txt"
    if gpu.is_file():
        lines.append(f"\ncard: {gpu.read_text().strip()}")
    lines += bench_table(work) + estimate_table(work)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
