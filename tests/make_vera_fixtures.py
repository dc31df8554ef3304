#!/usr/bin/python3
"""tests/make_vera_fixtures.py: golden values for tests/test_vera.c from independent PyTorch code.

1. PEFT's VeRA projections: torch.Generator().manual_seed(projection_prng_key), then vera_A (r, in_max) and
   vera_B (out_max, r) drawn in that order by PEFT's _kaiming_init (Tensor.uniform_ in +-sqrt(3) sqrt(2) /
   sqrt(fan_in), fan_in = size(1)), for the tiny model of make_model_fixtures.py with every target adapted
   (in_max = out_max = 32).
2. SORF-VeRA in float64 (written from the construction, not from fedex): the mixer S (greedy power-of-two
   blocks D1 H D2 H D3, three permuted block-diagonal stages), Gamma(b), Lambda_d = s G(theta) with Givens
   rotations in the order (0,1), (0,2), ..., (r-2, r-1), one adapted layer's forward and the gradients of s,
   theta and the input through autograd.

Run from the repository root: /usr/bin/python3 tests/make_vera_fixtures.py  (torch + numpy only)."""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import (OUT, TARGETS, forward, f32, loss_fn, make_head,  # noqa: E402
                                 write_safetensors)  # (float64 is the default dtype from there on)

R_PROJ, IN_MAX, OUT_MAX = 8, 32, 32
KEYS = (0, 7, 4294967295)


def peft_kaiming(shape, generator):
    # peft/tuners/vera/model.py _kaiming_init: a float32 tensor of SHAPE, fan_in = shape[1]
    t = torch.empty(shape, dtype=torch.float32)
    bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
    return t.uniform_(-bound, bound, generator=generator)


def projections():
    out = []
    for key in KEYS:
        g = torch.Generator(device="cpu").manual_seed(key)
        a = peft_kaiming((R_PROJ, IN_MAX), g)
        b = peft_kaiming((OUT_MAX, R_PROJ), g)
        out += [("vera_A_%d" % key, a.numpy()), ("vera_B_%d" % key, b.numpy())]
    return out


# ---------------------------------------------------------------- SORF-VeRA, from its definition
gen = torch.Generator().manual_seed(20251202)


def read_safetensors(path):
    """name -> numpy array (F32, I32, U8) of a safetensors file."""
    import json
    import struct
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    dt = {"F32": np.float32, "I32": np.int32, "U8": np.uint8}
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dt[v["dtype"]]).reshape(v["shape"])
    return out


def greedy(d):
    parts = []
    while d:
        parts.append(1 << (d.bit_length() - 1))
        d -= parts[-1]
    return parts


def hadamard(n):  # Sylvester's construction, normalised
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def random_mixer(d):
    """Signs (3 stages x D1, D2, D3 x d) and permutations (3 x d) of the test's own drawing."""
    signs = (torch.randint(0, 2, (3, 3, d), generator=gen) * 2 - 1).double()
    perms = torch.stack([torch.randperm(d, generator=gen) for _ in range(3)])
    return signs, perms


def dense_s(signs, perms):
    """S = B_P2 B_P1 B_P0, B_Pt = B_t[perm][:, perm], B_t = block_diag(D1 H D2 H D3) over the greedy blocks."""
    d = signs.shape[2]
    S = torch.eye(d)
    for t in range(3):
        blocks, o = [], 0
        for n in greedy(d):
            D1, D2, D3 = (torch.diag(signs[t, k, o:o + n]) for k in range(3))
            blocks.append(D1 @ hadamard(n) @ D2 @ hadamard(n) @ D3)
            o += n
        B = torch.block_diag(*blocks)
        p = perms[t]
        S = B[p][:, p] @ S
    return S


def gamma(b):
    """Gamma(b): 2x2 blocks [[a, -c], [c, a]], a = b[:d/2], c = b[d/2:]."""
    h = b.shape[0] // 2
    G = torch.zeros(2 * h, 2 * h)
    for j in range(h):
        a, c = b[j], b[h + j]
        G[2 * j, 2 * j], G[2 * j, 2 * j + 1], G[2 * j + 1, 2 * j], G[2 * j + 1, 2 * j + 1] = a, -c, c, a
    return G


def lambda_d(sd, r):
    """s G(theta): the rotation of pair (p, q), in the order (0,1), (0,2), ..., applied to the rows of the
    identity from the last pair to the first (the VeRA fork's build_lambda_d_rot), out of place for autograd."""
    pairs = [(p, q) for p in range(r - 1) for q in range(p + 1, r)]
    M = torch.eye(r)
    for idx in reversed(range(len(pairs))):
        p, q = pairs[idx]
        c, s = torch.cos(sd[1 + idx]), torch.sin(sd[1 + idx])
        rows = [M[i] for i in range(r)]
        rows[p], rows[q] = c * M[p] - s * M[q], s * M[p] + c * M[q]
        M = torch.stack(rows)
    return sd[0] * M


def sorf_ops():
    out = []
    for d in (24, 12):  # 16 + 8 and 8 + 4: the greedy split and the permutations across blocks
        signs, perms = random_mixer(d)
        S = dense_s(signs, perms)
        assert torch.allclose(S @ S.T, torch.eye(d), atol=1e-12)
        out += [("mix%d.signs" % d, f32(signs.reshape(-1))), ("mix%d.perm" % d, perms.reshape(-1).numpy().astype(np.int32)),
                ("mix%d.S" % d, f32(S))]
    b = torch.cat([1 + 0.3 * torch.randn(6, generator=gen), 0.4 * torch.randn(6, generator=gen)]).float().double()
    x = torch.randn(3, 12, generator=gen).float().double()
    G = gamma(b)
    out += [("gamma.b", f32(b)), ("gamma.x", f32(x)), ("gamma.y", f32(x @ G.T)), ("gamma.yt", f32(x @ G))]
    r = 5
    sd = torch.cat([torch.tensor([0.7]), torch.randn(r * (r - 1) // 2, generator=gen)]).float().double().requires_grad_(True)
    dM = torch.randn(r, r, generator=gen).float().double()
    M = lambda_d(sd, r)
    (M * dM).sum().backward()
    out += [("givens.sd", f32(sd)), ("givens.dM", f32(dM)), ("givens.M", f32(M)), ("givens.gsd", f32(sd.grad))]
    return out


SORF_TARGETS = ["query", "value", "intermediate.dense"]  # widths 16 and 32; in 16
SORF_R = 4


class SorfAdapters:
    """SORF-VeRA on the tiny model: dW = S Gamma(b) B_l Lambda_d A_l, the VeRA fork's forward
    h = x A^T; h = h Lambda^T; h = h B^T; h = h Gamma^T; h = h S^T."""

    def __init__(self):
        r = SORF_R
        self.vera_A = ((torch.rand(r, 16, generator=gen) * 2 - 1) * math.sqrt(6 / 16)).float().double()
        self.vera_B = ((torch.rand(32, r, generator=gen) * 2 - 1) * math.sqrt(6 / r)).float().double()
        self.mix = {d: random_mixer(d) for d in (16, 32)}
        self.S = {d: dense_s(*m) for d, m in self.mix.items()}
        self.p, self.frozen = {}, set()
        for l in range(2):
            for short, mod, o, i in TARGETS:
                if short not in SORF_TARGETS:
                    continue
                n = "encoder.layer.%d.%s" % (l, mod)
                self.p[n + ".sorf_d_scale"] = (0.5 + 0.2 * torch.randn(1, generator=gen)).float().double()
                self.p[n + ".sorf_d_angles"] = (0.5 * torch.randn(r * (r - 1) // 2, generator=gen)).float().double()
                self.p[n + ".sorf_b_real"] = (1 + 0.3 * torch.randn(o // 2, generator=gen)).float().double()
                self.p[n + ".sorf_b_imag"] = (0.3 * torch.randn(o // 2, generator=gen)).float().double()
                self.frozen |= {n + ".sorf_b_real", n + ".sorf_b_imag"}

    def delta(self, name, x):
        if name + ".sorf_d_scale" not in self.p:
            return 0.0
        r = SORF_R
        b = torch.cat([self.p[name + ".sorf_b_real"], self.p[name + ".sorf_b_imag"]])
        o, i = b.shape[0], x.shape[-1]
        sd = torch.cat([self.p[name + ".sorf_d_scale"], self.p[name + ".sorf_d_angles"]])
        h = x @ self.vera_A[:r, :i].T
        h = h @ lambda_d(sd, r).T
        h = h @ self.vera_B[:o, :r].T
        h = h @ gamma(b).T
        return h @ self.S[o].T


def sorf_case():
    base = {k: torch.from_numpy(v.astype(np.float64)) for k, v in read_safetensors(os.path.join(OUT, "model_base.safetensors")).items()}
    batch = read_safetensors(os.path.join(OUT, "model_batch.safetensors"))
    ids, mask = torch.from_numpy(batch["ids"].astype(np.int64)), torch.from_numpy(batch["mask"].astype(np.int64))
    labels = torch.from_numpy(batch["label"].astype(np.float64))
    ad = SorfAdapters()
    head = make_head(3)
    train = dict(ad.p)
    train.update(head)
    for k, t in train.items():
        t.requires_grad_(k not in ad.frozen)
    init = {k: v.detach().clone() for k, v in train.items()}
    logits = forward(base, head, ad, {}, ids, mask)
    loss = loss_fn(logits, labels)
    loss.backward()
    out = [(k, f32(v)) for k, v in init.items()]
    out += [("vera_A", f32(ad.vera_A)), ("vera_B", f32(ad.vera_B))]
    for d, (signs, perms) in ad.mix.items():
        out += [("mix%d.signs" % d, f32(signs.reshape(-1))), ("mix%d.perm" % d, perms.reshape(-1).numpy().astype(np.int32))]
    out += [("expect.logits", f32(logits)), ("expect.loss", f32(loss.reshape(1)))]
    out += [("grad." + k, f32(v.grad)) for k, v in train.items() if k not in ad.frozen]
    print("sorf case: loss %.6f, logits[0] %s" % (loss.item(), np.round(f32(logits[0]), 5)))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    write_safetensors(os.path.join(OUT, "sorf_ops.safetensors"), sorf_ops())
    write_safetensors(os.path.join(OUT, "sorf_case.safetensors"), sorf_case(),
                      {"targets": ",".join(SORF_TARGETS), "r": str(SORF_R), "config": "model_config.json"})
    write_safetensors(os.path.join(OUT, "vera_projections.safetensors"), projections(),
                      {"r": str(R_PROJ), "in_max": str(IN_MAX), "out_max": str(OUT_MAX)})
    print("wrote", os.path.join(OUT, "vera_projections.safetensors"))


if __name__ == "__main__":
    main()
