#!/usr/bin/env python3
"""Writes the small data sets the `recapc new` templates ship (pipelines/data/*.jsonl).

Run from the repository root: `python3 pipelines/data/generate.py`. Seeded, so a run
reproduces the committed files byte for byte. Every text is written in the 52 characters of
the `tiny` model's character-level tokenizer (lower case, digits, a little punctuation, no
newlines), since the templates train that model; `ok` refuses any other character.
"""
import json
import random

VOCAB = set("0123456789+-*= abcdefghijklmnopqrstuvwxyz.,:;!?()'\"/")
def ok(s):
    bad = set(s) - VOCAB
    assert not bad, (s, bad)
    return s

names = ["tom", "ana", "li", "sam", "mia", "raj", "eva", "ben", "zoe", "omar", "kim", "leo"]
things = ["apples", "pencils", "stickers", "coins", "books", "cards", "shells", "marbles"]

def problem(rng):
    n = rng.choice(names); t = rng.choice(things)
    k = rng.randrange(6)
    if k == 0:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        q = f"{n} has {a} {t} and gets {b} more. how many {t} does {n} have now?"
        return q, f"{a}+{b}={a+b}.", a + b
    if k == 1:
        a = rng.randint(5, 18); b = rng.randint(1, min(9, a - 1))
        q = f"{n} had {a} {t} and gave {b} to a friend. how many {t} are left?"
        return q, f"{a}-{b}={a-b}.", a - b
    if k == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        q = f"a box holds {a} {t}. how many {t} are in {b} boxes?"
        return q, f"{a}*{b}={a*b}.", a * b
    if k == 3:
        a, b, c = rng.randint(2, 9), rng.randint(2, 5), rng.randint(2, 9)
        q = f"{n} reads {a} pages a day for {b} days, then {c} more pages. how many pages is that?"
        return q, f"{a}*{b}={a*b}. {a*b}+{c}={a*b+c}.", a * b + c
    if k == 4:
        a = rng.randint(5, 18); b = rng.randint(1, min(9, a - 1)); c = rng.randint(1, 9)
        q = f"{n} has {a} {t}, loses {b}, then finds {c}. how many {t} does {n} have?"
        return q, f"{a}-{b}={a-b}. {a-b}+{c}={a-b+c}.", a - b + c
    a, b = rng.randint(2, 9), rng.randint(2, 9); c = rng.randint(1, min(9, a * b - 1))
    q = f"there are {a} rows of {b} chairs and {c} chairs are taken. how many chairs are free?"
    return q, f"{a}*{b}={a*b}. {a*b}-{c}={a*b-c}.", a * b - c

def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            for v in r.values():
                if isinstance(v, str): ok(v)
            f.write(json.dumps(r) + "\n")

def maths(seed, count, seen):
    rng = random.Random(seed); rows = []
    while len(rows) < count:
        q, work, n = problem(rng)
        if q in seen: continue
        seen.add(q)
        rows.append({"question": q, "answer": f"{work} answer: {n}"})
    return rows

seen = set()
write("pipelines/data/gsm8k-train.jsonl", maths(1, 200, seen))
write("pipelines/data/gsm8k-test.jsonl", maths(2, 32, seen))

# General instructions, replayed as SFT.
words = ["cat", "tree", "house", "river", "green", "apple", "stone", "cloud", "light", "paper",
         "music", "bread", "horse", "chair", "plant", "water", "smile", "train", "ocean", "tiger"]
days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
rng = random.Random(3); gen = []
for w in words:
    gen.append({"input": f"spell {w} backwards.", "target": w[::-1]})
    gen.append({"input": f"how many letters are in {w}?", "target": str(len(w))})
    gen.append({"input": f"what is the first letter of {w}?", "target": w[0]})
    gen.append({"input": f"what is the last letter of {w}?", "target": w[-1]})
for i, d in enumerate(days):
    gen.append({"input": f"what day comes after {d}?", "target": days[(i + 1) % 7]})
    gen.append({"input": f"what day comes before {d}?", "target": days[(i - 1) % 7]})
for _ in range(26):
    a, b = rng.sample(words, 2)
    gen.append({"input": f"which comes first in the alphabet, {a} or {b}?", "target": min(a, b)})
rng.shuffle(gen)
write("pipelines/data/general.jsonl", gen)

# Code tasks: one-line python functions, in the tiny tokenizer's characters.
def code_rows(ks):
    rows = []
    for k in ks:
        rows.append({"question": f"write a python function plus{k}(x) that returns x plus {k}.",
                     "solution": f"def plus{k}(x): return x+{k}",
                     "tests": [f"assert plus{k}(1) == {1+k}", f"assert plus{k}(-7) == {k-7}"]})
        rows.append({"question": f"write a python function minus{k}(x) that returns x minus {k}.",
                     "solution": f"def minus{k}(x): return x-{k}",
                     "tests": [f"assert minus{k}(20) == {20-k}", f"assert minus{k}(0) == {-k}"]})
        rows.append({"question": f"write a python function times{k}(x) that returns x times {k}.",
                     "solution": f"def times{k}(x): return x*{k}",
                     "tests": [f"assert times{k}(3) == {3*k}", f"assert times{k}(-2) == {-2*k}"]})
    return rows
fixed = [
    ("add(a, b)", "returns the sum of a and b", "def add(a, b): return a+b", ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]),
    ("sub(a, b)", "returns a minus b", "def sub(a, b): return a-b", ["assert sub(5, 3) == 2", "assert sub(0, 4) == -4"]),
    ("mul(a, b)", "returns the product of a and b", "def mul(a, b): return a*b", ["assert mul(4, 3) == 12", "assert mul(-2, 5) == -10"]),
    ("bigger(a, b)", "returns the larger of a and b", "def bigger(a, b): return max(a, b)", ["assert bigger(2, 9) == 9", "assert bigger(7, -1) == 7"]),
    ("smaller(a, b)", "returns the smaller of a and b", "def smaller(a, b): return min(a, b)", ["assert smaller(2, 9) == 2", "assert smaller(7, -1) == -1"]),
    ("square(x)", "returns x squared", "def square(x): return x*x", ["assert square(3) == 9", "assert square(-4) == 16"]),
    ("cube(x)", "returns x cubed", "def cube(x): return x*x*x", ["assert cube(2) == 8", "assert cube(-3) == -27"]),
    ("neg(x)", "returns minus x", "def neg(x): return -x", ["assert neg(3) == -3", "assert neg(-8) == 8"]),
    ("absval(x)", "returns the absolute value of x", "def absval(x): return abs(x)", ["assert absval(-5) == 5", "assert absval(4) == 4"]),
    ("iseven(n)", "returns true when n is even", "def iseven(n): return n//2*2 == n", ["assert iseven(4)", "assert not iseven(7)"]),
    ("avg(a, b)", "returns the mean of a and b", "def avg(a, b): return (a+b)/2", ["assert avg(2, 4) == 3", "assert avg(1, 2) == 1.5"]),
    ("shout(s)", "returns s followed by an exclamation mark", "def shout(s): return s+'!'", ["assert shout('hi') == 'hi!'", "assert shout('') == '!'"]),
    ("twice(s)", "returns s written twice", "def twice(s): return s+s", ["assert twice('ab') == 'abab'", "assert twice('') == ''"]),
    ("length(s)", "returns the number of characters in s", "def length(s): return len(s)", ["assert length('abc') == 3", "assert length('') == 0"]),
]
held = {"plus7", "minus3", "times5", "plus2", "minus8", "times9"}
every = code_rows(range(1, 10))
train = [r for r in every if r["solution"].split("(")[0][4:] not in held]
test = [r for r in every if r["solution"].split("(")[0][4:] in held]
for sig, what, sol, tests in fixed:
    train.append({"question": f"write a python function {sig} that {what}.", "solution": sol, "tests": tests})
random.Random(4).shuffle(train)
write("pipelines/data/code-train.jsonl", train)
write("pipelines/data/code-test.jsonl", test)
