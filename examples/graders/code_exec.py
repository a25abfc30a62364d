#!/usr/bin/env python3
"""A code-execution grader for recap's `exec(...)` verifier (docs/rewards.md).

Reads one JSON object per line on stdin, one per completion: `id`, `completion`, `answer`
(when the verifier has an extractor), `fields` (the data row). The program to grade is the
extracted `answer` when there is one, else the completion, with a Markdown code fence removed.
The row's `tests` field holds the tests: a list of Python statements (usually `assert`s) or one
string of them. The program and its tests run in a fresh Python subprocess (isolated mode, in
this grader's working directory) with a time limit per completion; the reward is 1.0 when the
subprocess exits cleanly, else 0.0. Writes one `{"id": ..., "reward": ...}` line per completion.

Usage: code_exec.py [--timeout SECONDS]   (default 5 seconds per completion)
"""

import json
import re
import subprocess
import sys

FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def program_of(item):
    """The code to run: the extracted answer, or the completion's first fenced block, or all."""
    text = item.get("answer")
    if text is None:
        text = item.get("completion", "")
    fenced = FENCE.search(text)
    return fenced.group(1) if fenced else text


def tests_of(item):
    tests = item.get("fields", {}).get("tests")
    if tests is None:
        return None
    if isinstance(tests, str):
        return tests
    return "\n".join(str(t) for t in tests)


def grade(item, timeout):
    tests = tests_of(item)
    if tests is None:
        # No tests: nothing to judge by, so no reward rather than a made-up one.
        return None
    source = program_of(item) + "\n\n" + tests + "\n"
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", source],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return 0.0
    return 1.0 if done.returncode == 0 else 0.0


def main():
    timeout = 5.0
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--timeout":
        timeout = float(args[1])
    elif args:
        sys.exit("usage: code_exec.py [--timeout SECONDS]")
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        print(json.dumps({"id": item["id"], "reward": grade(item, timeout)}), flush=True)


if __name__ == "__main__":
    main()
