#!/usr/bin/env python3
"""Writes the Hugging Face transformers reference logits for the fixture-tiny model.

Takes a Hugging Face model directory (default: ../shared/bench/fixture-tiny beside the
repository, or $RECAP_FIXTURE_TINY) and gives a small JSON test vector,
runtime/tests/data/fixture_tiny_reference.json: for a few prompts from the fixture's train.jsonl
(each with its answer appended, so the sequences are a little longer), the token ids as the
fixture's tokenizer.json encodes them (with its BOS) and the float32 logits of every position,
rounded to 6 significant digits. recap's model must reproduce these logits within 1e-4.

Run it once, in a virtual environment outside the repository that has torch (CPU) and
transformers, and commit only its output:

    python3 -m venv /work/venv-ref
    /work/venv-ref/bin/pip install torch transformers
    /work/venv-ref/bin/python scripts/make-reference-logits.py [--fixture DIR] [--out FILE]
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURE = Path(
    os.environ.get("RECAP_FIXTURE_TINY", ROOT.parent / "shared" / "bench" / "fixture-tiny")
)
DEFAULT_OUT = ROOT / "runtime" / "tests" / "data" / "fixture_tiny_reference.json"
# The prompts taken from train.jsonl: the first three rows, whose answers have 2 and 3 digits.
N_PROMPTS = 3


def sig6(x: float) -> float:
    """Rounds to 6 significant digits, which keeps the file small and the error under 1e-6
    relative, far inside the test's 1e-4 tolerance."""
    return float(f"{x:.6g}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    fixture = args.fixture
    if not (fixture / "config.json").is_file():
        print(f"make-reference-logits: {fixture} is not a model directory", file=sys.stderr)
        return 1

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(fixture, dtype=torch.float32)
    model.eval()
    tokenizer = Tokenizer.from_file(str(fixture / "tokenizer.json"))

    rows = []
    with open(fixture / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) == N_PROMPTS:
                break

    cases = []
    for row in rows:
        text = row["prompt"] + row["answer"]
        ids = tokenizer.encode(text, add_special_tokens=True).ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        cases.append(
            {
                "text": text,
                "input_ids": ids,
                "logits": [[sig6(v) for v in position] for position in logits.tolist()],
            }
        )

    vector = {
        "description": "float32 logits of every position, each sequence run alone (no padding), "
        "from Hugging Face transformers; made by scripts/make-reference-logits.py",
        "fixture": fixture.name,
        "model_safetensors_sha256": sha256(fixture / "model.safetensors"),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "vocab_size": model.config.vocab_size,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(vector, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"make-reference-logits: wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
