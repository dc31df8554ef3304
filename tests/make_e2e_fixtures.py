#!/usr/bin/python3
"""tests/make_e2e_fixtures.py: writes tests/fixtures/e2e_cases.jsonl, golden cases for e2e.c and for GPT-2's
tokenizer from independent references: Python's csv module (strict RFC 4180 dialect) reads the E2E files,
and Hugging Face's Rust tokenizer (the npm package `tokenizers`, driven by tests/hf_tokenize.js) gives the
token ids. The labels follow the reference code's recipe: the ids of "{MR} -> {ref} <|endoftext|>", -100 on
the positions of the ids of "{MR} ->" (and on padding).

usage: python3 tests/make_e2e_fixtures.py [SHARED_DIR]     (default ../shared, run from the repo root)
needs: node, and the package installed where NODE_PATH points (default build/hf-tools/node_modules):
       npm install --prefix build/hf-tools tokenizers@0.23.2

Each line of e2e_cases.jsonl is one JSON object with "kind":
  "text":  text (and pair, or null) -> ids (GPT-2, no special tokens added; <|endoftext|> is id 50256)
  "file":  file (devset.csv, testset_w_refs.csv under SHARED/data/e2e) -> rows, group (the row where each
           group of one MR starts, then rows)
  "row":   file, i (0-based data row) -> mr, ref, ids of the training text, prompt (ids of "{MR} ->")
  "csv":   data (a small file's text) -> rows [[mr, ref], ...] as the csv module reads them
"""
import csv
import io
import json
import os
import subprocess
import sys

shared = sys.argv[1] if len(sys.argv) > 1 else "../shared"
GPT2 = shared + "/models/gpt2"
E2E = shared + "/data/e2e"


def hf_ids(queries):
    env = dict(os.environ)
    env.setdefault("NODE_PATH", os.path.abspath("build/hf-tools/node_modules"))
    inp = "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in queries)
    out = subprocess.run(["node", "tests/hf_tokenize.js", GPT2], input=inp.encode("utf-8"), env=env,
                         stdout=subprocess.PIPE, check=True).stdout.decode("utf-8").splitlines()
    assert len(out) == len(queries)
    return [json.loads(l)["ids"] for l in out]


def read_rows(text):
    r = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert r[0] == ["mr", "ref"], r[0]
    return [tuple(x) for x in r[1:]]


TEXTS = [
    "Hello world", "", " ", "a", "<|endoftext|>", "<|endoftext|><|endoftext|>", " <|endoftext|>", "<|endoftext|> ",
    "x <|endoftext|> y", "x<|endoftext|>y", "a  <|endoftext|>", "a\n<|endoftext|>\n", "<|endoftext|>Hello",
    "<|endoftext|> Hello", "<|endoftext|", "|endoftext|>", "<|endoftext|>>", "<<|endoftext|>", "<|EndOfText|>",
    "<|endoftext |>", "<s>hi</s> <mask>", "It's the café's 3rd £20 deal!  Really?",
    "name[The Eagle], eatType[coffee shop], food[Japanese], priceRange[less than £20], customer rating[low], "
    "area[riverside], familyFriendly[yes], near[Burger King] ->",
    "name[The Eagle] -> The Eagle is a coffee shop. <|endoftext|>",
    "name[Cotto], priceRange[£20-25] -> Cotto costs £20-25. <|endoftext|>",
    "name[Blue Spice], area[city centre] ->  two spaces <|endoftext|>",
    "name[X] -> a\tb <|endoftext|>", "name[X] -> ends with a space  <|endoftext|>",
    "name[Zizzi] -> \u201cquoted\u201d \u2013 dash \u00e9 <|endoftext|>", "name[X] -> emoji \U0001f600 <|endoftext|>",
    "name[X] -> has <|endoftext|> inside <|endoftext|>",
]
PAIRS = [("Hello", " world"), ("a <|endoftext|>", "b"), ("", "x"), ("name[X] ->", " ref <|endoftext|>")]

CSVS = [
    'mr,ref\nname[A],plain\n',
    'mr,ref\r\n"name[A], area[x]","with, comma"\r\n"name[A], area[x]","say ""hi"""\r\n',
    '\ufeffmr,ref\nname[B],"multi\nline"\nname[C],last row without a newline',
    '"mr","ref"\n"name[D]",""""\n"name[D]","a""b""c"\n',
    'mr,ref\nname[E],\u00e9\u00e8 \u4e2d\u6587 \U0001f600\nname[F],"x\r\ny"\r\n',
]


def main():
    out = []
    ids = hf_ids([{"text": t} for t in TEXTS] + [{"text": a, "pair": b} for a, b in PAIRS])
    for t, i in zip(TEXTS, ids):
        out.append({"kind": "text", "text": t, "pair": None, "ids": i})
    for (a, b), i in zip(PAIRS, ids[len(TEXTS):]):
        out.append({"kind": "text", "text": a, "pair": b, "ids": i})
    for name in ("devset.csv", "testset_w_refs.csv"):
        rows = read_rows(open(E2E + "/" + name, encoding="utf-8", newline="").read())
        group = [i for i in range(len(rows)) if i == 0 or rows[i][0] != rows[i - 1][0]] + [len(rows)]
        assert len(set(rows[g][0] for g in group[:-1])) == len(group) - 1  # rows of one MR are adjacent
        out.append({"kind": "file", "file": name, "rows": len(rows), "group": group})
        pick = sorted(set(list(range(0, len(rows), 23)) + group[1:6] + [len(rows) - 1]) - {len(rows)})
        q = []
        for i in pick:
            mr, ref = rows[i]
            q += [{"text": "%s -> %s <|endoftext|>" % (mr, ref)}, {"text": "%s ->" % mr}]
        got = hf_ids(q)
        for k, i in enumerate(pick):
            full, prompt = got[2 * k], got[2 * k + 1]
            assert full[:len(prompt)] == prompt and full[-2:] == [220, 50256]
            out.append({"kind": "row", "file": name, "i": i, "mr": rows[i][0], "ref": rows[i][1], "ids": full,
                        "prompt": len(prompt)})
    for data in CSVS:
        out.append({"kind": "csv", "data": data, "rows": read_rows(data.lstrip("\ufeff"))})
    with open("tests/fixtures/e2e_cases.jsonl", "w", encoding="utf-8") as f:
        for o in out:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")
    print("wrote %d cases to tests/fixtures/e2e_cases.jsonl" % len(out))


if __name__ == "__main__":
    main()
