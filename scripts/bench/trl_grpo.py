#!/usr/bin/env python3
"""The peer of recap's GRPO benchmarks: TRL 1.16's GRPOTrainer with transformers' generate.

Runs GRPO with the same recipe as the recap pipelines under pipelines/bench/ (k3 KL against a
frozen reference, token-mean loss, eps 0.2, AdamW, constant learning rate, gradient clipping at
1.0, temperature 1.0, top_p 1) and prints one JSON line: median seconds per step after the
warm-up steps, generated tokens per second (over the time spent in `generate`), the mean number
of generated tokens per step, and peak RSS (CPU) or peak GPU memory (CUDA). Each finished step
also prints a JSON line to stderr, so a run cut short by a time limit still leaves its steps.

With `--micro-batch M` the step's completions go through the training pass M at a time
(gradient accumulation over completions / M micro-batches, one `generate` call of every
completion per step), as recap's `micro_batch` does; without it all at once.

The model is either a Hugging Face directory (`--model DIR`, e.g. the one `recapc import gguf`
writes from a GGUF, which transformers loads bit-exactly) or a `config.json` with seeded random
weights (`--config FILE --tokenizer DIR`; the weights are saved to a temporary directory, from
which TRL loads its reference model as it would a downloaded one). Prompts come from a JSONL
file with `prompt` and `answer` fields (`--data`), or are made of `--prompt-tokens` tokens each
when no data is given.

Examples:
  trl_grpo.py --model DIR --data train.jsonl --prompts 2 --completions 4 --new-tokens 32
  trl_grpo.py --config qwen2.5-0.5b.json --tokenizer DIR --device cuda --dtype bf16 \
      --prompts 16 --completions 8 --prompt-tokens 128 --new-tokens 256 --ignore-eos
  trl_grpo.py --config configs/qwen2.5-0.5b.json --tokenizer fixture-tiny --device cuda \
      --dtype bf16 --data pipelines/bench/data/prompts-128.jsonl --prompts 16 --completions 8 \
      --micro-batch 16 --new-tokens 256 --ignore-eos --steps 3
"""

import argparse
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model directory")
    src.add_argument("--config", help="config.json of a model built with random weights")
    p.add_argument("--tokenizer", help="directory with the tokenizer (default: --model)")
    p.add_argument("--seed", type=int, default=1, help="seed of weights, data and sampling")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--data", help="JSONL file with `prompt` and `answer` fields")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--completions", type=int, default=4, help="completions per prompt")
    p.add_argument("--micro-batch", type=int, default=0,
                   help="completions per training micro-batch (0: the whole step at once)")
    p.add_argument("--prompt-tokens", type=int, default=128,
                   help="length of the made-up prompts when --data is not given")
    p.add_argument("--new-tokens", type=int, default=32, help="max new tokens per completion")
    p.add_argument("--ignore-eos", action="store_true",
                   help="generate exactly --new-tokens tokens (no stop at EOS)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--steps", type=int, default=6, help="steps, warm-up included")
    p.add_argument("--warmup", type=int, default=1, help="steps left out of the median")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args()


def leading_int(text):
    m = re.match(r"\s*(-?[0-9]+)", text)
    return m.group(1) if m else None


def make_prompts(args, tok):
    """Rows of `prompt` and `answer`: from --data, or made of exactly --prompt-tokens ids."""
    if args.data:
        with open(args.data) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [{"prompt": r["prompt"], "answer": str(r["answer"])} for r in rows]
    import random

    rng = random.Random(args.seed)
    words = "the of a number sum is and to add two one three five seven nine".split()
    rows = []
    for _ in range(args.prompts * (args.steps + 1)):
        text = " ".join(rng.choice(words) for _ in range(args.prompt_tokens * 2))
        ids = tok(text, add_special_tokens=False)["input_ids"][: args.prompt_tokens]
        rows.append({"prompt": tok.decode(ids), "answer": "0"})
    return rows


def main():
    args = parse_args()
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tok_dir = args.tokenizer or args.model
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:
        config = AutoConfig.from_pretrained(args.config)
        # Initialised on the GPU when there is one: seconds rather than a minute for 1.5B.
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        # TRL builds its reference model from `config._name_or_path` with `from_pretrained`,
        # which a model made from a config does not have: save the weights and point there.
        weights = tempfile.mkdtemp(prefix="trl-grpo-init-")
        model.save_pretrained(weights)
        model.config._name_or_path = weights

    rows = make_prompts(args, tok)
    dataset = Dataset.from_list(rows)

    def correct(completions, answer, **_):
        return [1.0 if leading_int(c) == a else 0.0 for c, a in zip(completions, answer)]

    def starts_with_integer(completions, **_):
        return [1.0 if re.match(r"^[0-9]+", c) else 0.0 for c in completions]

    generation_kwargs = {"min_new_tokens": args.new_tokens} if args.ignore_eos else None
    n = args.prompts * args.completions
    micro = args.micro_batch or n
    if n % micro:
        sys.exit(f"--micro-batch {micro} does not divide the {n} completions of a step")
    out = tempfile.mkdtemp(prefix="trl-grpo-")
    config = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=n // micro,
        num_generations=args.completions,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        top_p=1.0,
        beta=args.beta,
        epsilon=0.2,
        loss_type="dapo",  # token-mean over the batch, recap's `token_mean`
        scale_rewards="group",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        weight_decay=0.0,
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        bf16=args.dtype == "bf16",
        use_cpu=args.device == "cpu",
        reward_weights=[1.0, 0.1],
        generation_kwargs=generation_kwargs,
        shuffle_dataset=False,
        disable_tqdm=True,
    )

    step_times, gen_times, gen_tokens = [], [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.t = time.perf_counter()
            self.gen_before, self.tokens_before = sum(gen_times), sum(gen_tokens)

        def on_step_end(self, *_, **__):
            if args.device == "cuda":
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - self.t)
            line = {"step": len(step_times), "s": round(step_times[-1], 4),
                    "generate_s": round(sum(gen_times) - self.gen_before, 4),
                    "gen_tokens": sum(gen_tokens) - self.tokens_before}
            if args.device == "cuda":
                line["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
            print(json.dumps(line), file=sys.stderr, flush=True)

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[correct, starts_with_integer],
        args=config,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[Timer()],
    )

    # Times every call of `generate` and counts the tokens it produced up to (and including)
    # the first EOS, which is the work TRL keeps.
    inner = trainer.model.generate
    eos = tok.eos_token_id

    def timed_generate(*a, **kw):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        ids = inner(*a, **kw)
        if args.device == "cuda":
            torch.cuda.synchronize()
        gen_times.append(time.perf_counter() - t)
        completion = ids[:, kw["input_ids"].shape[1]:]
        count = 0
        for row in completion.tolist():
            count += row.index(eos) + 1 if eos in row and not args.ignore_eos else len(row)
        gen_tokens.append(count)
        return ids

    trainer.model.generate = timed_generate
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()

    kept = slice(args.warmup, None)
    result = {
        "system": "trl",
        "device": args.device,
        "dtype": args.dtype,
        "steps": len(step_times),
        "micro_batch": micro,
        "median_step_s": statistics.median(step_times[kept]),
        "step_s": [round(s, 4) for s in step_times],
        "gen_tokens_per_step": statistics.mean(gen_tokens[kept]),
        "gen_tokens_per_s": sum(gen_tokens[kept]) / sum(gen_times[kept]),
        "versions": {
            "torch": torch.__version__,
            "trl": __import__("trl").__version__,
            "transformers": __import__("transformers").__version__,
        },
    }
    if args.device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 1e6
        result["peak_gpu_reserved_mb"] = torch.cuda.max_memory_reserved() / 1e6
        result["gpu"] = torch.cuda.get_device_name()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000.0
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
