#!/usr/bin/python3
"""tests/make_gpt2_generate_fixtures.py: golden greedy and beam-search outputs on the tiny random GPT-2s of
tests/make_gpt2_fixtures.py (tests/fixtures/gpt2_<shape>/), for tests/test_generate.c. The logits come from
that script's float64 PyTorch GPT-2 (a full forward over the whole row at every step: no cache), the
search from tests/make_generate_fixtures.py's Python implementation of Hugging Face generate(); neither
uses C code. A case is kept only when noise of 1e-4 on every logit (far above the float32 decoder's
error) changes none of its tokens, so the C decoder's rounding cannot decide it.
Writes tests/fixtures/gpt2_generate.txt. Run from the repository root (after make_gpt2_fixtures.py):
/usr/bin/python3 tests/make_gpt2_generate_fixtures.py"""
import json
import os
import random
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_generate_fixtures as search  # noqa: E402
import make_gpt2_fixtures as ref  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        raw = body[e["data_offsets"][0]:e["data_offsets"][1]]
        if e["dtype"] == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, {"F32": "<f4", "F16": "<f2"}[e["dtype"]])
        out[name] = torch.tensor(a.astype(np.float64)).reshape(e["shape"])
    return out


class GPT2:
    """The model of folder gpt2_<shape>: logits of the row's last position, float64."""

    def __init__(self, shape):
        folder = os.path.join(FIX, "gpt2_" + shape)
        with open(os.path.join(folder, "config.json")) as f:
            self.c = json.load(f)
        self.base = {}
        for k, v in read_safetensors(os.path.join(folder, "model.safetensors")).items():
            k = k[len("transformer."):] if k.startswith("transformer.") else k
            if k.split(".")[-2:] not in (["attn", "bias"], ["attn", "masked_bias"]) and k != "lm_head.weight":
                self.base[k] = v
        self.V, self.P, self.eos, self.memo = self.c["vocab_size"], self.c["n_positions"], self.c["eos_token_id"], {}

    def logits(self, row):
        key = tuple(row)
        if key not in self.memo:
            ids = torch.tensor([row])
            with torch.no_grad():
                z = ref.forward(self.c, self.base, {}, 0.0, ids, torch.ones(1, len(row), dtype=torch.uint8))
            self.memo[key] = z[0, -1].tolist()
        return self.memo[key]


class Noisy:
    """MODEL's logits plus a fixed uniform noise in [-eps, eps] per (row, token)."""

    def __init__(self, model, seed, eps):
        self.m, self.seed, self.eps, self.V = model, seed, eps, model.V

    def logits(self, row):
        r = random.Random(hash((self.seed,) + tuple(row)))
        return [x + self.eps * (2 * r.random() - 1) for x in self.m.logits(row)]


def run(model, prompt, cfg):
    if cfg["beams"] == 1:
        return search.greedy(model, prompt, cfg)
    return search.beam_search(model, prompt, cfg)


SETTINGS = [dict(beams=1, lp=1.0, early=0, nrep=0, genonly=0), dict(beams=1, lp=1.0, early=0, nrep=2, genonly=0),
            dict(beams=2, lp=1.0, early=0, nrep=0, genonly=0), dict(beams=4, lp=0.8, early=0, nrep=2, genonly=1),
            dict(beams=4, lp=0.8, early=0, nrep=2, genonly=0), dict(beams=3, lp=2.0, early=2, nrep=0, genonly=0),
            dict(beams=5, lp=-0.5, early=1, nrep=3, genonly=1), dict(beams=10, lp=0.8, early=0, nrep=4, genonly=1)]


def write_cases(family, models, path, rnd):
    """Every setting on every model of MODELS ({shape: model with .V, .P, .eos, .logits(row)}), kept when
    clear of float32 noise; written to PATH as tests/test_generate.c reads it."""
    lines = [f"# {os.path.basename(path)}, written by tests/make_{family}_generate_fixtures.py; do not edit.",
             "# case NAME shape beams max_new lp early nrep genonly eos (early: 0 False, 1 True, 2 never)",
             "# prompt N ids / want N ids / score S"]
    kept = 0
    for shape, model in models.items():
        for k, base_cfg in enumerate(SETTINGS):
            for attempt in range(40):
                n = rnd.randint(1, 4)
                prompt = [rnd.randrange(model.V) for _ in range(n)]
                cfg = dict(base_cfg, max_new=min(10, model.P - n + 1), eos=model.eos)
                # An end token the model does produce, so that hypotheses finish: the third token of the
                # continuation without one (every other attempt).
                if attempt % 2 == 0:
                    free = run(model, prompt, dict(cfg, eos=-1))[0]
                    cfg["eos"] = free[min(2, len(free) - 1)]
                tokens, score = run(model, prompt, cfg)
                if all(run(Noisy(model, s, 1e-4), prompt, cfg)[0] == tokens for s in range(3)):
                    break
            else:
                raise SystemExit(f"{family}_{shape} setting {k}: no prompt clear of float32 noise")
            lines.append(f"case {family}_{shape}_{k} {shape} {cfg['beams']} {cfg['max_new']} {cfg['lp']!r} "
                         f"{cfg['early']} {cfg['nrep']} {cfg['genonly']} {cfg['eos']}")
            lines.append(f"prompt {len(prompt)} " + " ".join(map(str, prompt)))
            lines.append(f"want {len(tokens)} " + " ".join(map(str, tokens)))
            lines.append(f"score {score!r}")
            kept += 1
            print(f"{family}_{shape} {cfg}: {prompt} -> {tokens}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {kept} cases")


def main():
    models = {}
    for shape in ("a", "b", "c"):
        models[shape] = GPT2(shape)
    write_cases("gpt2", models, os.path.join(FIX, "gpt2_generate.txt"), random.Random(20261203))


if __name__ == "__main__":
    main()
