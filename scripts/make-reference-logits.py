#!/usr/bin/env python3
"""Writes Hugging Face transformers reference logits that recap's models are tested against.

fixture-tiny (Qwen2): takes the fixture's HF directory (default: ../shared/bench/fixture-tiny
beside the repository, or $RECAP_FIXTURE_TINY) and gives a small JSON test vector,
runtime/tests/data/fixture_tiny_reference.json: for a few prompts from the fixture's train.jsonl
(each with its answer appended, so the sequences are a little longer), the token ids as the
fixture's tokenizer.json encodes them (with its BOS) and the float32 logits of every position,
rounded to 6 significant digits. recap's model must reproduce these logits within 1e-4.

SmolLM2 (Llama), with --smollm2 DIR: DIR is the HF directory that recap's GGUF import made from
SmolLM2-135M-Instruct.Q4_1.gguf (`gguf_import FILE DIR`). The vocabulary is too large to keep
every logit, so runtime/tests/data/smollm2_reference.json keeps, for each position of two
ChatML prompts, the logits of a fixed spread of 64 token ids and the 8 largest logits with their
ids.

Run it once, in a virtual environment outside the repository that has torch (CPU) and
transformers, and commit only its output:

    python3 -m venv /work/venv-ref
    /work/venv-ref/bin/pip install torch transformers
    /work/venv-ref/bin/python scripts/make-reference-logits.py [--fixture DIR] [--out FILE]
    /work/venv-ref/bin/python scripts/make-reference-logits.py --smollm2 IMPORTED_DIR
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
SMOLLM2_OUT = ROOT / "runtime" / "tests" / "data" / "smollm2_reference.json"
SMOLLM2_QUESTIONS = ["What is the capital of France?", "Name three primary colours."]
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# Every 768th token id: 64 ids spread over SmolLM2's 49,152-token vocabulary.
SMOLLM2_ID_STEP = 768
SMOLLM2_TOP_K = 8
# The prompts taken from train.jsonl: the first three rows, whose answers have 2 and 3 digits.
N_PROMPTS = 3


def sig6(x: float) -> float:
    """Rounds to 6 significant digits, which keeps the file small and the error under 1e-6
    relative, far inside the test's 1e-4 tolerance."""
    return float(f"{x:.6g}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chatml(question: str) -> str:
    """SmolLM2-Instruct's chat template for one user turn, with its default system prompt."""
    return (
        f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )


def smollm2(model_dir: Path, out: Path) -> int:
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab = model.config.vocab_size
    ids_kept = list(range(0, vocab, SMOLLM2_ID_STEP))
    cases = []
    for question in SMOLLM2_QUESTIONS:
        text = chatml(question)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        top = torch.topk(logits, SMOLLM2_TOP_K, dim=-1)
        cases.append(
            {
                "text": text,
                "input_ids": ids,
                "spread_logits": [
                    [sig6(v) for v in row] for row in logits[:, ids_kept].tolist()
                ],
                "top_ids": top.indices.tolist(),
                "top_logits": [[sig6(v) for v in row] for row in top.values.tolist()],
            }
        )
    vector = {
        "description": "float32 logits of SmolLM2-135M-Instruct (imported from the Q4_1 GGUF by "
        "recap) from Hugging Face transformers, each sequence run alone; spread_logits are the "
        "logits of ids 0, step, 2 * step, ...; made by scripts/make-reference-logits.py --smollm2",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "model_safetensors_sha256": sha256(model_dir / "model.safetensors"),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "vocab_size": vocab,
        "id_step": SMOLLM2_ID_STEP,
        "cases": cases,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(vector, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"make-reference-logits: wrote {out} ({out.stat().st_size} bytes)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--smollm2",
        type=Path,
        default=None,
        metavar="DIR",
        help="the HF directory recap imported from SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    args = parser.parse_args()

    if args.smollm2 is not None:
        return smollm2(args.smollm2, args.out or SMOLLM2_OUT)
    args.out = args.out or DEFAULT_OUT

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
