#!/usr/bin/python3
"""tests/make_llama_fixtures.py: golden values for tests/test_llama.c, from an independent float64 PyTorch
Llama written here from Hugging Face's LlamaForCausalLM semantics (pre-norm RMSNorm computed on the
hidden state, q/k/v/o projections with or without bias (attention_bias) and the MLP's likewise (mlp_bias),
rotary positions by rotate_half with inv_freq = theta^(-2i/hd) rescaled by rope_scaling's "linear" or
"llama3" rule (transformers' modeling_rope_utils), repeat_kv for grouped-query attention, causal attention
with finfo.min on padded keys and Mistral's sliding window (key j seen by query i iff i - window < j <= i),
the SiLU-gated MLP, model.norm, lm_head or the tied embedding) with LoRA as PEFT applies it to nn.Linear,
the shifted, label-smoothed loss of transformers' LabelSmoother, clip_grad_norm_ and torch.optim.AdamW.
No transformers/peft package and no C code is used; safetensors are written by hand.

Run from the repository root: /usr/bin/python3 tests/make_llama_fixtures.py  (torch + numpy only)
Writes tests/fixtures/llama_<shape>/ (config.json and model.safetensors in Hugging Face's layout, F32 or
BF16, "model." prefix, lm_head.weight when untied) and tests/fixtures/llama_<shape>_case.safetensors: the
batch, the adapter tensors, logits, loss, every adapter gradient, AdamW steps with clipping, and a greedy
continuation with its logits."""
import json
import math
import os
import struct

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
gen = torch.Generator().manual_seed(20261203)
ADAM_STEPS, ADAM_LR, ADAM_WARMUP, ADAM_WD = 5, 1e-2, 1, 0.01
GREEDY_PROMPT, GREEDY_NEW = 4, 6

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {  # name: config, file dtype, the case
    # grouped-query (4 query heads on 2 key/value heads), untied head, every target
    "a": (dict(model_type="llama", vocab_size=47, hidden_size=16, intermediate_size=28, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=24, rms_norm_eps=1e-5,
               rope_theta=10000.0, tie_word_embeddings=False), "F32",
          dict(targets=ALL, r=4, alpha=16.0, rslora=False, freeze_a=False, eps=0.1, clip=1.0)),
    # multi-head (no num_key_value_heads), tied head, a head_dim of its own (2 x 10 = 20 != 12), BF16 file
    "b": (dict(model_type="llama", vocab_size=41, hidden_size=12, intermediate_size=20, num_hidden_layers=3,
               num_attention_heads=2, head_dim=10, max_position_embeddings=16, rms_norm_eps=1e-6,
               rope_theta=500000.0, tie_word_embeddings=True), "BF16",
          dict(targets=["q_proj", "v_proj", "gate_proj"], r=2, alpha=4.0, rslora=True, freeze_a=False, eps=0.0,
               clip=0.0)),
    # Mistral's config: one key/value head for 3 query heads, a sliding window wider than the batch
    "c": (dict(model_type="mistral", vocab_size=37, hidden_size=18, intermediate_size=24, num_hidden_layers=1,
               num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=32, sliding_window=14,
               rms_norm_eps=1e-5, rope_theta=1000.0, tie_word_embeddings=False), "F32",
          dict(targets=["o_proj", "up_proj", "down_proj", "k_proj"], r=4, alpha=8.0, rslora=False, freeze_a=True,
               eps=0.2, clip=0.05)),
    # Llama 3.1's rope_scaling (head_dim 8: inv_freq 1, 0.1, 0.01, 0.001, wavelengths 6.3, 63, 628, 6283
    # against L / high = 16 and L / low = 64: one high, one medium (smoothed), two low frequencies), every
    # bias, grouped-query, untied head
    "d": (dict(model_type="llama", vocab_size=43, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=40,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
               rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=64)), "F32",
          dict(targets=ALL, r=2, alpha=4.0, rslora=False, freeze_a=False, eps=0.0, clip=1.0)),
    # linear rope_scaling under the older "type" key, multi-head, tied head, MLP biases only, BF16 file
    "e": (dict(model_type="llama", vocab_size=39, hidden_size=12, intermediate_size=16, num_hidden_layers=2,
               num_attention_heads=3, max_position_embeddings=20, rms_norm_eps=1e-6, rope_theta=100.0,
               tie_word_embeddings=True, mlp_bias=True, rope_scaling=dict(type="linear", factor=4.0)), "BF16",
          dict(targets=["q_proj", "k_proj", "down_proj"], r=3, alpha=6.0, rslora=False, freeze_a=False, eps=0.1,
               clip=0.0)),
    # Mistral with a sliding window of 6 over batches of 12 and a greedy continuation past it, grouped-query
    # (2 key/value heads for 4), untied head. The window exceeds every row's padding, so that no padded
    # query is left with padded keys alone (a row HF fills with finfo.min everywhere, undefined here)
    "f": (dict(model_type="mistral", vocab_size=41, hidden_size=16, intermediate_size=20, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, sliding_window=6,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False), "F32",
          dict(targets=["q_proj", "v_proj", "o_proj", "gate_proj"], r=4, alpha=8.0, rslora=True, freeze_a=False,
               eps=0.0, clip=0.5)),
}
ORDER = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj",
         "mlp.down_proj", "mlp.gate_proj"]  # model.c's target order (FX_TI_*)


def randn(*shape, std=1.0, mean=0.0):
    return torch.randn(*shape, generator=gen) * std + mean


def to_dtype(t, dtype):
    """The value the C loader will see: the tensor rounded to the file's dtype, back in float64."""
    return t.to({"F32": torch.float32, "BF16": torch.bfloat16}[dtype]).double()


def dims(c):
    H, I, nh = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    hd = c.get("head_dim") or H // nh
    nkv = c.get("num_key_value_heads") or nh
    return H, I, nh, nkv, hd


def config_json(c):
    arch = "MistralForCausalLM" if c["model_type"] == "mistral" else "LlamaForCausalLM"
    eos = c["vocab_size"] - 1
    out = dict(architectures=[arch], hidden_act="silu", initializer_range=0.02, attention_bias=False,
               mlp_bias=False, attention_dropout=0.0, rope_scaling=None, bos_token_id=0, eos_token_id=[eos],
               use_cache=True)
    out.update(c)
    return out


def make_base(c, dtype):
    """LlamaForCausalLM's state dict (nn.Linear weights (out, in)), values larger than HF's init so that
    every path moves the logits by more than fp32 noise."""
    H, I, nh, nkv, hd = dims(c)
    b = {"model.embed_tokens.weight": randn(c["vocab_size"], H, std=0.7)}
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        for mod, i, o in (("self_attn.q_proj", H, nh * hd), ("self_attn.k_proj", H, nkv * hd),
                          ("self_attn.v_proj", H, nkv * hd), ("self_attn.o_proj", nh * hd, H),
                          ("mlp.gate_proj", H, I), ("mlp.up_proj", H, I), ("mlp.down_proj", I, H)):
            b[p + mod + ".weight"] = randn(o, i, std=1.0 / math.sqrt(i))
            if c.get("attention_bias" if mod.startswith("self_attn") else "mlp_bias"):
                b[p + mod + ".bias"] = randn(o, std=0.3)
        b[p + "input_layernorm.weight"] = randn(H, std=0.1, mean=1.0)
        b[p + "post_attention_layernorm.weight"] = randn(H, std=0.1, mean=1.0)
    b["model.norm.weight"] = randn(H, std=0.1, mean=1.0)
    if not c["tie_word_embeddings"]:
        b["lm_head.weight"] = randn(c["vocab_size"], H, std=0.5)
    return {k: to_dtype(v, dtype) for k, v in b.items()}


# ---------------------------------------------------------------- the reference model
def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps))


def inv_freq(c, hd):
    """RoPE's inverse frequencies under rope_scaling, as transformers' ROPE_INIT_FUNCTIONS define them."""
    inv = c["rope_theta"] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rs = c.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        L = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > L / lo, inv / factor, inv)
        smooth = (L / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < L / hi) & ~(wavelen > L / lo)
        return torch.where(medium, smoothed, scaled)
    assert kind == "default", kind
    return inv


def rope(x, inv):
    """x (n, heads, T, hd) at positions 0 .. T-1: x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1)."""
    T, hd = x.shape[2], x.shape[3]
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * emb.cos().to(x.dtype) + torch.cat([-x2, x1], dim=-1) * emb.sin().to(x.dtype)


def forward(c, base, lora, scale, ids, mask):
    """LlamaForCausalLM's logits (n, T, V): y = x W^T plus PEFT's lora_B(lora_A(x)) * scaling."""
    n, T = ids.shape
    H, I, nh, nkv, hd = dims(c)
    eps, inv = c["rms_norm_eps"], inv_freq(c, hd)
    dt = base["model.embed_tokens.weight"].dtype
    min_ = torch.finfo(dt).min

    def lin(l, mod, x):
        name = "layers.%d.%s" % (l, mod)
        y = x @ base["model." + name + ".weight"].T
        if "model." + name + ".bias" in base:
            y = y + base["model." + name + ".bias"]
        if name + ".lora_A" in lora:
            y = y + (x @ lora[name + ".lora_A"].T) @ lora[name + ".lora_B"].T * scale
        return y

    x = base["model.embed_tokens.weight"][ids]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    if c.get("sliding_window"):  # Mistral: key j visible to query i iff i - window < j <= i
        causal &= ~torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-c["sliding_window"])
    addmask = (1.0 - mask.to(dt))[:, None, None, :] * min_
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rms_norm(x, base[p + "input_layernorm.weight"], eps)
        q = lin(l, "self_attn.q_proj", h).reshape(n, T, nh, hd).transpose(1, 2)
        k = lin(l, "self_attn.k_proj", h).reshape(n, T, nkv, hd).transpose(1, 2)
        v = lin(l, "self_attn.v_proj", h).reshape(n, T, nkv, hd).transpose(1, 2)
        q, k = rope(q, inv), rope(k, inv)
        k = k[:, :, None].expand(n, nkv, nh // nkv, T, hd).reshape(n, nh, T, hd)  # repeat_kv
        v = v[:, :, None].expand(n, nkv, nh // nkv, T, hd).reshape(n, nh, T, hd)
        att = q @ k.transpose(-1, -2) * hd ** -0.5
        att = torch.where(causal, att, torch.tensor(min_, dtype=dt)) + addmask
        ctx = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(n, T, nh * hd)
        x = x + lin(l, "self_attn.o_proj", ctx)
        h = rms_norm(x, base[p + "post_attention_layernorm.weight"], eps)
        g = lin(l, "mlp.gate_proj", h)
        x = x + lin(l, "mlp.down_proj", g * torch.sigmoid(g) * lin(l, "mlp.up_proj", h))
    x = rms_norm(x, base["model.norm.weight"], eps)
    head = base["model.embed_tokens.weight"] if c["tie_word_embeddings"] else base["lm_head.weight"]
    return x @ head.T


def lm_loss(logits, labels, eps):
    """transformers' LabelSmoother with shift_labels; eps 0 is the model's own mean cross-entropy."""
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
    dt = {np.float32: "F32", np.int32: "I32", np.uint8: "U8"}
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
    return (name, t.numpy().astype(np.float32))


# ---------------------------------------------------------------- one shape
def make_batch(c):
    """Three right-padded rows (pad = the end token), prompt and padding -100, the rest supervised."""
    V, eos = c["vocab_size"], c["vocab_size"] - 1
    T = min(c["max_position_embeddings"], 12)
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
    c, dtype, case = SHAPES[name]
    base = make_base(c, dtype)
    folder = os.path.join(OUT, "llama_" + name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_json(c), f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(folder, "model.safetensors"), [file_entry(k, v, dtype) for k, v in base.items()],
                      {"format": "pt"})

    ids, mask, labels = make_batch(c)
    H, I, nh, nkv, hd = dims(c)
    shape = {"self_attn.q_proj": (H, nh * hd), "self_attn.k_proj": (H, nkv * hd), "self_attn.v_proj": (H, nkv * hd),
             "self_attn.o_proj": (nh * hd, H), "mlp.gate_proj": (H, I), "mlp.up_proj": (H, I),
             "mlp.down_proj": (I, H)}
    mods = [m for m in ORDER if m.split(".")[1] in case["targets"]]
    r, alpha = case["r"], case["alpha"]
    scale = alpha / math.sqrt(r) if case["rslora"] else alpha / r
    # AdamW's first steps move an element by about lr sign(g): draw again while a gradient element is
    # within fp32 noise of 0.
    for draw in range(1, 100):
        lora = {}
        for l in range(c["num_hidden_layers"]):
            for m in mods:
                i, o = shape[m]
                lora["layers.%d.%s.lora_A" % (l, m)] = randn(r, i, std=0.4).float().double()
                lora["layers.%d.%s.lora_B" % (l, m)] = randn(o, r, std=0.2).float().double()
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
    # PyTorch's own fp32 on the same case, the scale of test_llama.c's tolerances
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
        lo = lm_loss(forward(c, base, lora, scale, ids, mask), labels, case["eps"])
        lo.backward()
        if case["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, case["clip"])
        losses.append(lo.item())
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
    write_safetensors(os.path.join(OUT, "llama_%s_case.safetensors" % name), out, meta)
    print("llama_%s: %s, draw %d, torch fp32 logits error %.1e of max |logit| %.2f, loss %.6f, grad norm %.4f, "
          "losses %.5f .. %.5f, greedy %s" % (name, dtype, draw, fp32_err, logits.abs().max().item(), loss.item(), norm0,
                                              losses[0], losses[-1], seq[prompt_n:]))


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in SHAPES:
        run_shape(name)


if __name__ == "__main__":
    main()
