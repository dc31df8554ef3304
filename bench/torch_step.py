#!/usr/bin/python3
"""bench/torch_step.py: one RoBERTa or GPT-2 + LoRA training step in PyTorch, timed, as the yardstick for
bench/bench_step.c. Written independently of fedex (plain torch, no transformers): random weights, the
same shapes (config.json, torch's default random init, dropout on). RoBERTa: LoRA on query/value, AdamW
on the adapters and the classifier head. GPT-2 (config.json's model_type "gpt2"): LoRA on c_attn and both
c_proj, the tied LM head, the shifted loss with label smoothing 0.1 over every token, gradients clipped
at norm 1.0, AdamW on the adapters. It measures time only. One-shot, it prints "torch_step_ms MEDIAN";
with --serve it stays up and times one step per command on stdin, so that bench_step can interleave its
steps with fedex's (and try thread settings side by side in several such processes); --batches gives it
real, padded batches (ids, mask, labels) to step on as well as the full random one.

usage: torch_step.py CONFIG_JSON [--batch 8] [--tokens 128] [--rank 4] [--threads 1] [--steps 5]
                     [--serve [--batches FILE]]"""
import argparse
import json
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # bench_step reads this line as the reason to skip its PyTorch peer
    print(f"error no torch ({e})", flush=True)
    sys.exit(0)


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


class GPT2Block(nn.Module):
    """Pre-LN: x + attn(ln_1 x), then x + mlp(ln_2 x); causal attention, gelu tanh."""

    def __init__(self, c, r, alpha):
        super().__init__()
        H = c["n_embd"]
        I = c.get("n_inner") or 4 * H
        eps, p = c["layer_norm_epsilon"], c["resid_pdrop"]
        self.nh, self.p, self.p_a = c["n_head"], p, c["attn_pdrop"]
        self.ln1, self.ln2 = nn.LayerNorm(H, eps=eps), nn.LayerNorm(H, eps=eps)
        self.attn = LoRALinear(H, 3 * H, r, alpha)
        self.proj = LoRALinear(H, H, r, alpha)
        self.fc = nn.Linear(H, I)
        self.mproj = LoRALinear(I, H, r, alpha)
        for mod in (self.ln1, self.ln2, self.fc):
            mod.requires_grad_(False)

    def forward(self, x):
        n, T, H = x.shape
        q, k, v = self.attn(self.ln1(x)).split(H, dim=-1)
        q, k, v = (t.view(n, T, self.nh, H // self.nh).transpose(1, 2) for t in (q, k, v))
        s = q @ k.transpose(-1, -2) / math.sqrt(H // self.nh)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
        ctx = (F.dropout(s.softmax(-1), self.p_a, self.training) @ v).transpose(1, 2).reshape(n, T, H)
        x = x + F.dropout(self.proj(ctx), self.p, self.training)
        h = F.gelu(self.fc(self.ln2(x)), approximate="tanh")
        return x + F.dropout(self.mproj(h), self.p, self.training)


class GPT2(nn.Module):
    def __init__(self, c, r, alpha):
        super().__init__()
        H = c["n_embd"]
        self.wte = nn.Embedding(c["vocab_size"], H)
        self.wpe = nn.Embedding(c["n_positions"], H)
        self.blocks = nn.ModuleList([GPT2Block(c, r, alpha) for _ in range(c["n_layer"])])
        self.lnf = nn.LayerNorm(H, eps=c["layer_norm_epsilon"])
        self.p = c["embd_pdrop"]
        for mod in (self.wte, self.wpe, self.lnf):
            mod.requires_grad_(False)

    def forward(self, ids, mask, labels):
        x = F.dropout(self.wte(ids) + self.wpe(torch.arange(ids.shape[1])), self.p, self.training)
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.lnf(x), self.wte.weight)  # the tied head
        V = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), label_smoothing=0.1)


def read_batches(path):
    """bench_step's batch file: "fedex-batches 1", the count, then per batch "n T", n rows of T ids, n
    rows of T mask values and a row of n labels, all whitespace-separated integers."""
    with open(path) as f:
        tok = f.read().split()
    if tok[:2] != ["fedex-batches", "1"]:
        raise SystemExit(f"torch_step.py: {path}: not a fedex-batches 1 file")
    vals = list(map(int, tok[2:]))
    count, i, out = vals[0], 1, []
    for _ in range(count):
        n, T = vals[i], vals[i + 1]
        i += 2
        ids = torch.tensor(vals[i:i + n * T]).view(n, T)
        mask = torch.tensor(vals[i + n * T:i + 2 * n * T]).view(n, T)
        labels = torch.tensor(vals[i + 2 * n * T:i + 2 * n * T + n])
        i += 2 * n * T + n
        out.append((ids, mask, labels))
    if i != len(vals):
        raise SystemExit(f"torch_step.py: {path}: {len(vals) - i} values after the last batch")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--serve", action="store_true",
                    help="answer commands on stdin: 'threads N', 'step full' or 'step K' (the K-th batch of "
                         "--batches), 'quit'; each gets one line, 'ok ...' or 'error ...'")
    ap.add_argument("--batches", help="real batches for 'step K' (bench_step writes them)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config) as f:
        c = json.load(f)
    gpt2 = c.get("model_type") == "gpt2"
    m = (GPT2(c, a.rank, 32.0) if gpt2 else Model(c, a.rank, 2.0 * a.rank)).train()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(4, c["vocab_size"], (a.batch, a.tokens))
    mask = torch.ones(a.batch, a.tokens, dtype=torch.long)
    labels = torch.randint(0, 2, (a.batch,))
    if gpt2:  # per-token labels, the first 32 of each row ignored (-100), as bench_step's batch
        labels = ids.clone()
        labels[:, :32] = -100
    full = (ids, mask, labels)
    real = read_batches(a.batches) if a.batches else []

    def step(batch):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = m(*batch)
        loss.backward()
        if gpt2:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return time.perf_counter() - t0, loss.item()

    if not a.serve:
        times = [step(full)[0] for _ in range(a.steps + 1)][1:]  # the first warms the allocator and pool
        print("torch_step_ms %.3f" % (1e3 * statistics.median(times)))
        return
    mkl = torch.backends.mkl.is_available()
    print(f"ok torch {torch.__version__}, {torch.get_num_threads()} threads, MKL {'yes' if mkl else 'none'}, "
          f"{sum(p.numel() for p in params)} trainable, {len(real)} real batches", flush=True)
    for line in sys.stdin:
        w = line.split()
        if w == ["quit"]:
            break
        if len(w) == 2 and w[0] == "threads" and w[1].isdigit() and int(w[1]) > 0:
            torch.set_num_threads(int(w[1]))
            reply = f"ok {torch.get_num_threads()}"
        elif len(w) == 2 and w[0] == "step" and (w[1] == "full" or (w[1].isdigit() and int(w[1]) < len(real))):
            sec, loss = step(full if w[1] == "full" else real[int(w[1])])
            reply = f"ok {sec:.6f} {loss:.6f}"
        else:
            reply = f"error bad command {line.strip()!r}"
        print(reply, flush=True)


if __name__ == "__main__":
    main()
