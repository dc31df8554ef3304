#!/usr/bin/python3
"""bench/torch_step.py: one RoBERTa + LoRA training step in PyTorch, timed, as the yardstick for
bench/bench_step.c. Written independently of fedex (plain torch, no transformers): random weights, the
same shapes (config.json, torch's default random init, LoRA on query/value, hidden and attention dropout on, AdamW on the adapters and
the classifier head). It measures time only. Prints "torch_step_ms MEDIAN" last.

usage: torch_step.py CONFIG_JSON [--batch 8] [--tokens 128] [--rank 4] [--threads 2] [--steps 5]"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    """y = x W^T + b + s (x A^T) B^T, W frozen; A (r, in), B (out, r)."""

    def __init__(self, fin, fout, r, alpha):
        super().__init__()
        self.base = nn.Linear(fin, fout)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, fin).uniform_(-1 / math.sqrt(fin), 1 / math.sqrt(fin)))
        self.B = nn.Parameter(torch.zeros(fout, r))
        self.s = alpha / r

    def forward(self, x):
        return self.base(x) + self.s * F.linear(F.linear(x, self.A), self.B)


class Layer(nn.Module):
    def __init__(self, c, r, alpha):
        super().__init__()
        H, I = c["hidden_size"], c["intermediate_size"]
        self.nh = c["num_attention_heads"]
        self.q = LoRALinear(H, H, r, alpha)
        self.k = nn.Linear(H, H)
        self.v = LoRALinear(H, H, r, alpha)
        self.o = nn.Linear(H, H)
        self.ln1 = nn.LayerNorm(H, eps=c["layer_norm_eps"])
        self.up = nn.Linear(H, I)
        self.down = nn.Linear(I, H)
        self.ln2 = nn.LayerNorm(H, eps=c["layer_norm_eps"])
        self.p_h = c["hidden_dropout_prob"]
        self.p_a = c["attention_probs_dropout_prob"]
        for mod in (self.k, self.o, self.up, self.down, self.ln1, self.ln2):
            mod.requires_grad_(False)

    def forward(self, x, bias):
        n, T, H = x.shape
        hd = H // self.nh

        def heads(t):
            return t.view(n, T, self.nh, hd).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        s = q @ k.transpose(-1, -2) / math.sqrt(hd) + bias
        p = F.dropout(s.softmax(-1), self.p_a, self.training)
        ctx = (p @ v).transpose(1, 2).reshape(n, T, H)
        x = self.ln1(x + F.dropout(self.o(ctx), self.p_h, self.training))
        h = F.gelu(self.up(x))
        return self.ln2(x + F.dropout(self.down(h), self.p_h, self.training))


class Model(nn.Module):
    def __init__(self, c, r, alpha, labels=2):
        super().__init__()
        H = c["hidden_size"]
        self.word = nn.Embedding(c["vocab_size"], H)
        self.pos = nn.Embedding(c["max_position_embeddings"], H)
        self.typ = nn.Embedding(c["type_vocab_size"], H)
        self.ln = nn.LayerNorm(H, eps=c["layer_norm_eps"])
        self.layers = nn.ModuleList([Layer(c, r, alpha) for _ in range(c["num_hidden_layers"])])
        self.dense = nn.Linear(H, H)
        self.out = nn.Linear(H, labels)
        self.p_h = c["hidden_dropout_prob"]
        self.pad = c.get("pad_token_id", 1)
        for mod in (self.word, self.pos, self.typ, self.ln):
            mod.requires_grad_(False)

    def forward(self, ids, mask, labels):
        # RoBERTa positions count from pad_id + 1 over real tokens.
        pos = torch.cumsum(mask, 1) * mask + self.pad
        x = self.word(ids) + self.pos(pos) + self.typ(torch.zeros_like(ids))
        x = F.dropout(self.ln(x), self.p_h, self.training)
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, bias)
        h = F.dropout(x[:, 0], self.p_h, self.training)
        h = F.dropout(torch.tanh(self.dense(h)), self.p_h, self.training)
        return F.cross_entropy(self.out(h), labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config) as f:
        c = json.load(f)
    m = Model(c, a.rank, 2.0 * a.rank).train()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(4, c["vocab_size"], (a.batch, a.tokens))
    mask = torch.ones(a.batch, a.tokens, dtype=torch.long)
    labels = torch.randint(0, 2, (a.batch,))
    times = []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = m(ids, mask, labels)
        loss.backward()
        opt.step()
        if step > 0:  # the first step warms the allocator and the thread pool
            times.append(time.perf_counter() - t0)
    print("trainable %d, loss %.4f" % (sum(p.numel() for p in params), loss.item()))
    print("torch_step_ms %.3f" % (1e3 * statistics.median(times)))


if __name__ == "__main__":
    main()
