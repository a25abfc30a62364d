"""Fills the computed columns of graders.tsv from the reference graders.

The Rust test (runtime/tests/graders.rs) only reads graders.tsv; this script is how its
`math_verify` column and the expected scores of rows whose source is `math_verify` or `re` were
made. Run it with a Python that has math-verify 0.9 (pip install 'math-verify[antlr4_13_2]'):

    python runtime/tests/data/graders_truth.py rows.txt runtime/tests/data/graders.tsv

`rows.txt` holds the rows without the computed columns (verifier, prediction, gold, expected,
source, note), `?` where the expected score is to be computed. Gold answers without `$` or
`\\boxed` are wrapped in `$...$` for math_verify, because that is how LaTeX gold answers are
stored in the RLVR data sets; predictions are passed as written, with math_verify's default
extraction (LaTeX and plain expressions).
"""

import re
import sys

from math_verify import StringExtractionConfig, parse, verify

NEWLINE = "\u2424"


def decode(text):
    return text.replace(NEWLINE, "\n")


def gold_for_math_verify(gold):
    return gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"


def math_verify_score(kind, options, prediction, gold):
    if kind == "choice":
        config = [StringExtractionConfig(strings=tuple(options))]
        return int(verify(parse(gold, config), parse(prediction, config)))
    return int(verify(parse(gold_for_math_verify(gold)), parse(prediction)))


def main(rows_path, out_path):
    out = []
    for line in open(rows_path, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line:
            continue
        spec, prediction, gold, expected, source, note = line.split("\t")
        words = spec.split(" ")
        kind, opts = words[0], dict(w.split("=", 1) if "=" in w else (w, "") for w in words[1:])
        pred, gold_text = decode(prediction), decode(gold)
        mv = "-"
        if kind in ("math_equal", "numeric", "choice") and not (
            set(opts) & {"tag", "trim", "first_number", "tol"}
        ):
            mv = str(math_verify_score(kind, opts.get("options", "ABCDEFGH"), pred, gold_text))
        if expected == "?":
            if source == "math_verify":
                expected = mv
            elif source == "re":
                expected = str(int(re.search(gold_text, pred) is not None))
            else:
                sys.exit(f"no way to compute row: {line}")
        out.append("\t".join([spec, prediction, gold, expected, source, mv, note]))
    header = open(out_path, encoding="utf-8").read().split("\nverifier\t")[0]
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        f.write("\t".join(["verifier", "prediction", "gold", "expected", "source", "math_verify", "note"]) + "\n")
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
