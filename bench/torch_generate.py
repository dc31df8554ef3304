#!/usr/bin/python3
"""bench/torch_generate.py: the yardstick for bench/bench_generate.c: the same decode loop in PyTorch,
written independently of fedex (plain torch, no transformers): a GPT-2 of CONFIG's shapes with random
weights and LoRA on c_attn and c_proj, float32, a per-layer key/value cache grown by one position a step,
beam search (log-softmax, beam sums, the best 2B of B x V candidates, B kept, caches reordered by
index_select, no 4-gram twice among the generated tokens), no end token, so every run makes the same
number of steps. It measures time only. Prints "torch_generate_s MEDIAN" last (seconds per prompt).

usage: torch_generate.py CONFIG_JSON [--beams 10] [--prompt 24] [--new 16] [--threads 2] [--reps 1]"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class Model:
    def __init__(self, c, rank=4, alpha=32.0):
        g = torch.Generator().manual_seed(0)
        H, V, P, L = c["n_embd"], c["vocab_size"], c["n_positions"], c["n_layer"]
        I = c.get("n_inner") or 4 * H
        self.H, self.nh, self.s = H, c["n_head"], alpha / rank
        rn = lambda *s: torch.randn(*s, generator=g) * 0.02
        self.wte, self.wpe = rn(V, H), rn(P, H)
        self.layers = []
        for _ in range(L):
            lay = {"ln1": (torch.ones(H), torch.zeros(H)), "ln2": (torch.ones(H), torch.zeros(H))}
            for name, i, o, lora in (("c_attn", H, 3 * H, True), ("a_proj", H, H, True), ("c_fc", H, I, False),
                                     ("m_proj", I, H, True)):
                lay[name] = (rn(i, o), torch.zeros(o), (rn(rank, i), torch.zeros(o, rank)) if lora else None)
            self.layers.append(lay)
        self.lnf = (torch.ones(H), torch.zeros(H))

    def conv(self, p, x):
        w, b, lora = p
        y = torch.addmm(b, x, w)
        if lora:
            y = y + self.s * ((x @ lora[0].t()) @ lora[1].t())
        return y

    def forward(self, ids, pos0, cache):
        """ids (S, T) at positions pos0.. ; cache: per layer [k, v] of (S, nh, t, hd) or None. Last logits."""
        S, T = ids.shape
        H, nh = self.H, self.nh
        hd = H // nh
        x = (self.wte[ids] + self.wpe[pos0:pos0 + T][None]).reshape(S * T, H)
        for l, lay in enumerate(self.layers):
            h = F.layer_norm(x, (H,), *lay["ln1"], 1e-5)
            q, k, v = self.conv(lay["c_attn"], h).reshape(S, T, 3, nh, hd).permute(2, 0, 3, 1, 4)
            if cache[l] is not None:
                k = torch.cat([cache[l][0], k], 2)
                v = torch.cat([cache[l][1], v], 2)
            cache[l] = [k, v]
            att = q @ k.transpose(-1, -2) / math.sqrt(hd)
            if T > 1:
                att = att.masked_fill(torch.ones(T, k.shape[2], dtype=torch.bool).triu(k.shape[2] - T + 1), float("-inf"))
            ctx = (att.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(S * T, H)
            x = x + self.conv(lay["a_proj"], ctx)
            h = F.layer_norm(x, (H,), *lay["ln2"], 1e-5)
            x = x + self.conv(lay["m_proj"], gelu_new(self.conv(lay["c_fc"], h)))
        x = F.layer_norm(x.reshape(S, T, H)[:, -1], (H,), *self.lnf, 1e-5)
        return x @ self.wte.t()


def banned(gen, n=4):
    if len(gen) + 1 < n:
        return []
    prefix = tuple(gen[len(gen) - n + 1:])
    return [gen[i + n - 1] for i in range(len(gen) - n + 1) if tuple(gen[i:i + n - 1]) == prefix]


@torch.no_grad()
def beam_search(m, prompt, B, new):
    cache = [None] * len(m.layers)
    logits = m.forward(prompt[None], 0, cache).expand(B, -1)
    cache = [[k.expand(B, -1, -1, -1).contiguous(), v.expand(B, -1, -1, -1).contiguous()] for k, v in cache]
    scores = torch.full((B,), -1e9)
    scores[0] = 0
    gens = [[] for _ in range(B)]
    V = logits.shape[1]
    for step in range(new):
        lp = torch.log_softmax(logits.double(), -1)
        for b in range(B):
            for t in banned(gens[b]):
                lp[b, t] = float("-inf")
        top, idx = torch.topk((lp + scores.double()[:, None]).reshape(-1), 2 * B)
        src, tok = (idx // V)[:B], (idx % V)[:B]  # no end token: the first B continue
        scores = top[:B].float()
        gens = [gens[s] + [t] for s, t in zip(src.tolist(), tok.tolist())]
        if step + 1 == new:
            break
        cache = [[k.index_select(0, src), v.index_select(0, src)] for k, v in cache]
        logits = m.forward(tok[:, None], len(prompt) + step, cache)
    return gens[int(scores.argmax())]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--prompt", type=int, default=24)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open(a.config) as f:
        c = json.load(f)
    m = Model(c)
    prompt = torch.randint(0, c["vocab_size"], (a.prompt,), generator=torch.Generator().manual_seed(1))
    beam_search(m, prompt, a.beams, 2)  # warm-up
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        beam_search(m, prompt, a.beams, a.new)
        times.append(time.perf_counter() - t0)
    print("torch_generate_s %.6f" % statistics.median(times))


if __name__ == "__main__":
    main()
