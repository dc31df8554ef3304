#!/usr/bin/python3
"""tests/make_gpt2_fixtures.py: golden values for tests/test_gpt2.c, from an independent float64 PyTorch
GPT-2 written here from Hugging Face's GPT2LMHeadModel semantics (pre-LN blocks, Conv1D weights stored
(in, out) and applied as x W + b, fused c_attn, causal attention with finfo.min, gelu_new, ln_f, the LM
head tied to wte) with LoRA as PEFT applies it to Conv1D layers, the shifted, label-smoothed loss of
transformers' LabelSmoother, clip_grad_norm_ and torch.optim.AdamW. No transformers/peft package and no C
code is used; safetensors are written by hand.

Run from the repository root: /usr/bin/python3 tests/make_gpt2_fixtures.py  (torch + numpy only)
Writes tests/fixtures/gpt2_<shape>/ (config.json and model.safetensors in Hugging Face's layout: F32 with
the "transformer." prefix, lm_head.weight and the old attn.bias buffers; BF16 without the prefix; F16),
and tests/fixtures/gpt2_<shape>_case.safetensors: the batch, the adapter tensors, logits, loss, every
adapter gradient, AdamW steps with clipping, and a greedy continuation with its logits."""
import json
import math
import os
import struct

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
gen = torch.Generator().manual_seed(20261202)
ADAM_STEPS, ADAM_LR, ADAM_WARMUP, ADAM_WD = 5, 1e-2, 1, 0.01
GREEDY_PROMPT, GREEDY_NEW = 4, 6


def randn(*shape, std=1.0, mean=0.0):
    return torch.randn(*shape, generator=gen) * std + mean


def to_dtype(t, dtype):
    """The value the C loader will see: the tensor rounded to the file's dtype, back in float64."""
    return t.to({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]).double()


# ---------------------------------------------------------------- shapes
SHAPES = {  # name: config, file dtype, whether the file carries the "transformer." prefix, the case
    "a": (dict(vocab_size=53, n_embd=16, n_layer=2, n_head=2, n_positions=24, n_inner=None), "F32", True,
          dict(targets=["c_attn", "c_proj"], r=4, alpha=32.0, rslora=False, freeze_a=False, eps=0.1, clip=1.0)),
    "b": (dict(vocab_size=41, n_embd=24, n_layer=3, n_head=3, n_positions=16, n_inner=40), "BF16", False,
          dict(targets=["c_attn", "c_proj", "c_fc"], r=2, alpha=4.0, rslora=True, freeze_a=False, eps=0.0,
               clip=0.0)),
    "c": (dict(vocab_size=37, n_embd=12, n_layer=1, n_head=4, n_positions=20, n_inner=28), "F16", True,
          dict(targets=["c_attn"], r=4, alpha=8.0, rslora=False, freeze_a=True, eps=0.2, clip=0.05)),
}
# target name -> the Conv1D modules of a block it adapts (PEFT: "c_proj" is a suffix of both)
MODULES = {"c_attn": ["attn.c_attn"], "c_proj": ["attn.c_proj", "mlp.c_proj"], "c_fc": ["mlp.c_fc"]}
ORDER = ["attn.c_proj", "mlp.c_fc", "mlp.c_proj", "attn.c_attn"]  # model.c's target order (FX_TI_*)


def config_json(c):
    eos = c["vocab_size"] - 1
    return dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", activation_function="gelu_new",
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02,
                bos_token_id=eos, eos_token_id=eos, n_ctx=c["n_positions"], scale_attn_weights=True,
                tie_word_embeddings=True, **c)


def make_base(c, dtype):
    """Hugging Face's state dict (Conv1D weights (in, out)), values larger than HF's init so that every
    path moves the logits by more than fp32 noise."""
    H, I = c["n_embd"], c["n_inner"] or 4 * c["n_embd"]
    b = {"wte.weight": randn(c["vocab_size"], H, std=0.5), "wpe.weight": randn(c["n_positions"], H, std=0.3)}
    for l in range(c["n_layer"]):
        p = "h.%d." % l
        for ln in ("ln_1", "ln_2"):
            b[p + ln + ".weight"] = randn(H, std=0.1, mean=1.0)
            b[p + ln + ".bias"] = randn(H, std=0.1)
        for mod, i, o in (("attn.c_attn", H, 3 * H), ("attn.c_proj", H, H), ("mlp.c_fc", H, I), ("mlp.c_proj", I, H)):
            b[p + mod + ".weight"] = randn(i, o, std=1.0 / math.sqrt(i))
            b[p + mod + ".bias"] = randn(o, std=0.1)
    b["ln_f.weight"] = randn(H, std=0.1, mean=1.0)
    b["ln_f.bias"] = randn(H, std=0.1)
    return {k: to_dtype(v, dtype) for k, v in b.items()}


# ---------------------------------------------------------------- the reference model
def layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def gelu_new(x):  # transformers' NewGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def forward(c, base, lora, scale, ids, mask):
    """GPT2LMHeadModel's logits (n, T, V): Conv1D y = x W + b plus PEFT's lora_B(lora_A(x)) * scaling."""
    n, T = ids.shape
    H, nh = c["n_embd"], c["n_head"]
    hd = H // nh
    dt = base["wte.weight"].dtype  # float64; float32 to measure PyTorch's own fp32 error
    min_ = torch.finfo(dt).min

    def conv(l, mod, x):
        name = "h.%d.%s" % (l, mod)
        y = x @ base[name + ".weight"] + base[name + ".bias"]
        if name + ".lora_A" in lora:
            y = y + (x @ lora[name + ".lora_A"].T) @ lora[name + ".lora_B"].T * scale
        return y

    x = base["wte.weight"][ids] + base["wpe.weight"][torch.arange(T)][None]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    addmask = (1.0 - mask.to(dt))[:, None, None, :] * min_
    for l in range(c["n_layer"]):
        p = "h.%d." % l
        h = layer_norm(x, base[p + "ln_1.weight"], base[p + "ln_1.bias"])
        q, k, v = conv(l, "attn.c_attn", h).split(H, dim=2)
        q, k, v = (t.reshape(n, T, nh, hd).transpose(1, 2) for t in (q, k, v))
        att = q @ k.transpose(-1, -2) / math.sqrt(hd)
        att = torch.where(causal, att, torch.tensor(min_, dtype=dt)) + addmask
        ctx = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(n, T, H)
        x = x + conv(l, "attn.c_proj", ctx)
        h = layer_norm(x, base[p + "ln_2.weight"], base[p + "ln_2.bias"])
        x = x + conv(l, "mlp.c_proj", gelu_new(conv(l, "mlp.c_fc", h)))
    x = layer_norm(x, base["ln_f.weight"], base["ln_f.bias"])
    return x @ base["wte.weight"].T


def lm_loss(logits, labels, eps):
    """transformers' LabelSmoother with shift_labels (the Trainer's causal-LM loss); eps 0 is
    GPT2LMHeadModel's own mean cross-entropy over the shifted labels."""
    logits, labels = logits[:, :-1, :], labels[:, 1:]
    log_probs = -torch.log_softmax(logits, dim=-1)
    pad = labels.eq(-100)
    lab = labels.clamp(min=0)
    nll = log_probs.gather(-1, lab.unsqueeze(-1)).squeeze(-1).masked_fill(pad, 0.0)
    smooth = log_probs.sum(-1).masked_fill(pad, 0.0)
    active = pad.numel() - pad.long().sum()
    return (1 - eps) * nll.sum() / active + eps * smooth.sum() / (active * log_probs.shape[-1])


def hf_linear(step):
    if step < ADAM_WARMUP:
        return step / max(1, ADAM_WARMUP)
    return max(0.0, (ADAM_STEPS - step) / max(1, ADAM_STEPS - ADAM_WARMUP))


# ---------------------------------------------------------------- safetensors, written by hand
def write_safetensors(path, tensors, meta=None):
    """tensors: list of (name, numpy array) or (name, "bf16", uint16 array of raw bits)."""
    dt = {np.float32: "F32", np.float16: "F16", np.int32: "I32", np.uint8: "U8"}
    header, blobs, off = {}, [], 0
    for item in tensors:
        name, arr = item[0], item[-1]
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": "BF16" if len(item) == 3 else dt[arr.dtype.type], "shape": list(arr.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def f32(t):
    return t.detach().numpy().astype(np.float32)


def file_entry(name, t, dtype):
    if dtype == "BF16":
        return (name, "bf16", t.float().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    return (name, t.numpy().astype(np.float16 if dtype == "F16" else np.float32))


# ---------------------------------------------------------------- one shape
def make_batch(c):
    """Three right-padded rows (pad = the end token), E2E-like targets: the prompt and the padding -100,
    the rest (ending with the end token) supervised."""
    V, eos = c["vocab_size"], c["vocab_size"] - 1
    T = min(c["n_positions"], 12)
    lens, prompts = [T, T - 3, T - 5], [4, 3, 5]
    ids = torch.full((3, T), eos, dtype=torch.long)
    labels = torch.full((3, T), -100, dtype=torch.long)
    for i, (n, p) in enumerate(zip(lens, prompts)):
        ids[i, :n - 1] = torch.randint(0, V - 1, (n - 1,), generator=gen)
        ids[i, n - 1] = eos
        labels[i, p:n] = ids[i, p:n]
    mask = torch.zeros(3, T, dtype=torch.uint8)
    for i, n in enumerate(lens):
        mask[i, :n] = 1
    return ids, mask, labels


def run_shape(name):
    c, dtype, prefixed, case = SHAPES[name]
    base = make_base(c, dtype)
    folder = os.path.join(OUT, "gpt2_" + name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_json(c), f, indent=2)
        f.write("\n")
    pre = "transformer." if prefixed else ""
    entries = [file_entry(pre + k, v, dtype) for k, v in base.items()]
    if prefixed:  # an older file: the causal-mask buffers and the tied head, which the loader skips
        T_ = c["n_positions"]
        for l in range(c["n_layer"]):
            entries.append(file_entry(pre + "h.%d.attn.bias" % l, torch.tril(torch.ones(1, 1, T_, T_)), dtype))
            entries.append(file_entry(pre + "h.%d.attn.masked_bias" % l, torch.tensor(-1e4), dtype))
        entries.append(file_entry("lm_head.weight", base["wte.weight"], dtype))
    write_safetensors(os.path.join(folder, "model.safetensors"), entries, {"format": "pt"})

    ids, mask, labels = make_batch(c)
    H, I = c["n_embd"], c["n_inner"] or 4 * c["n_embd"]
    dims = {"attn.c_attn": (H, 3 * H), "attn.c_proj": (H, H), "mlp.c_fc": (H, I), "mlp.c_proj": (I, H)}
    mods = [m for m in ORDER if any(m in MODULES[t] for t in case["targets"])]
    r, alpha = case["r"], case["alpha"]
    scale = alpha / math.sqrt(r) if case["rslora"] else alpha / r
    # AdamW's first steps move an element by about lr sign(g): draw again while a gradient element is
    # within fp32 noise of 0.
    for draw in range(1, 100):
        lora = {}
        for l in range(c["n_layer"]):
            for m in mods:
                i, o = dims[m]
                lora["h.%d.%s.lora_A" % (l, m)] = randn(r, i, std=0.4).float().double()
                lora["h.%d.%s.lora_B" % (l, m)] = randn(o, r, std=0.2).float().double()
        frozen = {k for k in lora if case["freeze_a"] and k.endswith(".lora_A")}
        for k, t in lora.items():
            t.requires_grad_(k not in frozen)
        init = {k: v.detach().clone() for k, v in lora.items()}
        logits = forward(c, base, lora, scale, ids, mask)
        loss = lm_loss(logits, labels, case["eps"])
        loss.backward()
        grads = {k: v.grad.detach().clone() for k, v in lora.items() if k not in frozen}
        for v in lora.values():
            v.grad = None
        if all(g.abs().min() >= 1e-5 * g.abs().max() for g in grads.values()):
            break
    norm0 = math.sqrt(sum((g ** 2).sum().item() for g in grads.values()))
    # PyTorch's own fp32 on the same case, the scale of test_gpt2.c's tolerances: logits error over their
    # largest magnitude
    with torch.no_grad():
        z32 = forward(c, {k: v.float() for k, v in base.items()}, {k: v.float() for k, v in lora.items()}, scale,
                      ids, mask)
    fp32_err = ((z32.double() - logits).abs().max() / logits.abs().max()).item()

    params = [v for k, v in lora.items() if k not in frozen]
    opt = torch.optim.AdamW(params, lr=ADAM_LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=ADAM_WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_linear)
    losses = []
    for _ in range(ADAM_STEPS):  # the Trainer's order: backward, clip, step, schedule
        opt.zero_grad()
        l = lm_loss(forward(c, base, lora, scale, ids, mask), labels, case["eps"])
        l.backward()
        if case["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, case["clip"])
        losses.append(l.item())
        opt.step()
        sched.step()

    # greedy continuation of row 0's first tokens with the initial adapters, by the full forward each
    # step (no cache); every step's top two logits apart by more than fp32 noise
    with torch.no_grad():
        for p0 in range(GREEDY_PROMPT, ids.shape[1]):
            seq, steps, ok = ids[0, :p0].tolist(), [], True
            for _ in range(GREEDY_NEW):
                z = forward(c, base, init, scale, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.uint8))[0, -1]
                top = torch.topk(z, 2).values
                ok = ok and (top[0] - top[1]).item() > 1e-3
                steps.append(z)
                seq.append(int(z.argmax()))
            if ok:
                break
    assert ok, "no prompt of row 0 gives a greedy continuation clear of fp32 ties"
    prompt_n = len(seq) - GREEDY_NEW

    meta = {"targets": ",".join(case["targets"]), "r": str(r), "alpha": repr(alpha),
            "rslora": str(int(case["rslora"])), "freeze_a": str(int(case["freeze_a"])),
            "label_smoothing": repr(case["eps"]), "max_grad_norm": repr(case["clip"]),
            "greedy_prompt": str(prompt_n), "adam_steps": str(ADAM_STEPS)}
    out = [("ids", ids.numpy().astype(np.int32)), ("mask", mask.numpy()), ("targets", labels.numpy().astype(np.int32))]
    out += [(k, f32(v)) for k, v in init.items()]
    out += [("expect.logits", f32(logits)), ("expect.loss", f32(loss.reshape(1))),
            ("expect.grad_norm", np.array([norm0], np.float32))]
    out += [("grad." + k, f32(v)) for k, v in grads.items()]
    out += [("expect.losses", np.array(losses, np.float32))]
    out += [("final." + k, f32(v)) for k, v in lora.items()]
    out += [("greedy.ids", np.array(seq, np.int32)), ("greedy.logits", f32(torch.stack(steps)))]
    write_safetensors(os.path.join(OUT, "gpt2_%s_case.safetensors" % name), out, meta)
    print("gpt2_%s: %s, draw %d, torch fp32 logits error %.1e of max |logit| %.2f, loss %.6f, grad norm %.4f, "
          "losses %.5f .. %.5f, greedy %s" % (name, dtype, draw, fp32_err, logits.abs().max().item(), loss.item(), norm0,
                                              losses[0], losses[-1], seq[prompt_n:]))


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in SHAPES:
        run_shape(name)


if __name__ == "__main__":
    main()
