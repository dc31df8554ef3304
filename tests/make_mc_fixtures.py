#!/usr/bin/python3
"""tests/make_mc_fixtures.py: golden choice log-likelihoods for tests/test_instruct.c. The float64 PyTorch
GPT-2 and Llama of tests/make_gpt2_fixtures.py and tests/make_llama_fixtures.py (their forward(), imported,
no C code) run on the weights of tests/fixtures/gpt2_a and llama_a (read back from their safetensors here),
and score multiple-choice rows given as token ids: log p(choice | context) = the sum over the choice's
tokens of the log-softmax of the logits after the context and the choice's earlier tokens. The picks:
acc, the largest sum; acc_norm, the largest sum divided by the choice's length in characters (lm-eval-
harness), given here per choice; ties to the first, as numpy's argmax.

Run from the repository root: /usr/bin/python3 tests/make_mc_fixtures.py  (torch + numpy only)
Writes tests/fixtures/mc_cases.json."""
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_gpt2_fixtures as g2  # noqa: E402
import make_llama_fixtures as ll  # noqa: E402

torch.set_default_dtype(torch.float64)
FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    head = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if v["dtype"] == "F32":
            t = np.frombuffer(body[a:b], dtype="<f4").astype(np.float64)
        elif v["dtype"] == "BF16":
            u = np.frombuffer(body[a:b], dtype="<u2").astype(np.uint32) << 16
            t = u.view(np.float32).astype(np.float64)
        else:
            raise SystemExit("%s: %s: dtype %s" % (path, k, v["dtype"]))
        out[k] = torch.tensor(t.reshape(v["shape"]))
    return out


def loglik(fwd, c, base, ctx, cont):
    ids = torch.tensor([ctx + cont])
    logits = fwd(c, base, {}, 1.0, ids, torch.ones_like(ids))[0]
    lp = torch.log_softmax(logits, dim=-1)
    return float(sum(lp[len(ctx) - 1 + j, t] for j, t in enumerate(cont)))


def main():
    rng = np.random.default_rng(20261204)
    out = {}
    for name, fwd in (("gpt2_a", g2.forward), ("llama_a", ll.forward)):
        folder = os.path.join(FIX, name)
        with open(os.path.join(folder, "config.json")) as f:
            c = json.load(f)
        base = read_safetensors(os.path.join(folder, "model.safetensors"))
        if name.startswith("gpt2"):
            base = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in base.items()}
            maxpos = c["n_positions"]
        else:
            maxpos = c["max_position_embeddings"]
        V = c["vocab_size"]
        rows = []
        for r in range(6):
            nctx = int(rng.integers(1, 8))
            ctx = [int(x) for x in rng.integers(0, V, nctx)]
            k = int(rng.integers(2, 5))
            choices = [[int(x) for x in rng.integers(0, V, int(rng.integers(1, min(6, maxpos - nctx) + 1)))] for _ in range(k)]
            chars = [int(rng.integers(1, 12)) for _ in range(k)]
            lls = [loglik(fwd, c, base, ctx, ch) for ch in choices]
            rows.append(dict(ctx=ctx, choices=choices, chars=chars, ll=lls, acc_pick=int(np.argmax(lls)),
                             norm_pick=int(np.argmax(np.array(lls) / np.array(chars)))))
        out[name] = rows
    with open(os.path.join(FIX, "mc_cases.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
