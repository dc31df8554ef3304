#!/usr/bin/python3
"""tests/make_model_fixtures.py: golden values for tests/test_model.c, from an independent float64 PyTorch
RoBERTa-for-sequence-classification (Hugging Face modeling_roberta semantics) with LoRA and VeRA layers
computed as PEFT computes them. It writes safetensors by hand (no C code, no transformers/peft needed).

Run from the repository root: /usr/bin/python3 tests/make_model_fixtures.py  (torch + numpy only)
Writes tests/fixtures/model_*: configs, base weights, a padded batch, one file per case (adapter tensors,
expected logits, loss, gradients and 10 AdamW steps), and F16 / BF16 checkpoints for the loader."""
import json
import math
import os
import struct

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

# ---------------------------------------------------------------- the tiny model
CFG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
           max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
           layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
           initializer_range=0.02, hidden_act="gelu", model_type="roberta",
           architectures=["RobertaForSequenceClassification"], position_embedding_type="absolute")
H, I, NL, NH = CFG["hidden_size"], CFG["intermediate_size"], CFG["num_hidden_layers"], CFG["num_attention_heads"]
PAD = CFG["pad_token_id"]
TARGETS = [  # (short name, module path inside a layer, out, in): the order of model.c's tables
    ("query", "attention.self.query", H, H), ("key", "attention.self.key", H, H),
    ("value", "attention.self.value", H, H), ("attention.output.dense", "attention.output.dense", H, H),
    ("intermediate.dense", "intermediate.dense", I, H), ("output.dense", "output.dense", H, I)]
ADAM_STEPS, ADAM_LR, ADAM_WARMUP, ADAM_WD = 10, 1e-2, 2, 0.01

gen = torch.Generator().manual_seed(20240611)


def randn(*shape, std=1.0, mean=0.0):
    # Values are rounded to fp32 once, here, so the C model (fp32) and this reference (fp64) start from
    # the same numbers and differ only in the precision of their arithmetic.
    return (torch.randn(*shape, generator=gen) * std + mean).float().double()


def uniform(*shape, bound=1.0):
    return ((torch.rand(*shape, generator=gen) * 2 - 1) * bound).float().double()


def config_json(num_labels):
    c = dict(CFG)
    c["id2label"] = {str(i): "LABEL_%d" % i for i in range(num_labels)}
    c["label2id"] = {"LABEL_%d" % i: i for i in range(num_labels)}
    return c


def make_base():
    # Larger than HF's N(0, 0.02) so that every path moves the logits by more than fp32 noise.
    b = {"embeddings.word_embeddings.weight": randn(CFG["vocab_size"], H, std=0.5),
         "embeddings.position_embeddings.weight": randn(CFG["max_position_embeddings"], H, std=0.5),
         "embeddings.token_type_embeddings.weight": randn(1, H, std=0.5),
         "embeddings.LayerNorm.weight": randn(H, std=0.1, mean=1.0),
         "embeddings.LayerNorm.bias": randn(H, std=0.1)}
    for l in range(NL):
        p = "encoder.layer.%d." % l
        for _, mod, o, i in TARGETS:
            b[p + mod + ".weight"] = randn(o, i, std=1.0 / math.sqrt(i))
            b[p + mod + ".bias"] = randn(o, std=0.1)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            b[p + ln + ".weight"] = randn(H, std=0.1, mean=1.0)
            b[p + ln + ".bias"] = randn(H, std=0.1)
    return b


def make_head(num_labels):
    return {"classifier.dense.weight": randn(H, H, std=0.3), "classifier.dense.bias": randn(H, std=0.1),
            "classifier.out_proj.weight": randn(num_labels, H, std=0.5),
            "classifier.out_proj.bias": randn(num_labels, std=0.1)}


# ---------------------------------------------------------------- the reference forward pass
def layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + CFG["layer_norm_eps"]) * w + b


def gelu(x):  # exact erf form, as HF's "gelu"
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class Adapters:
    """The trainable tensors of one case, named as model.c names them, plus the frozen VeRA projections."""

    def __init__(self, kind, targets, r, alpha=0.0, rslora=False):
        self.kind, self.targets, self.r = kind, targets, r
        self.scale = alpha / math.sqrt(r) if rslora else alpha / r if kind == "lora" else 1.0
        self.p = {}
        self.vera_A = self.vera_B = None
        dims = [(o, i) for short, _, o, i in TARGETS if short in targets]
        if kind == "vera":  # shared projections sized for the largest adapted layer, as PEFT's _find_dim
            in_max, out_max = max(i for _, i in dims), max(o for o, _ in dims)
            self.vera_A = uniform(r, in_max, bound=math.sqrt(3.0 / in_max))
            self.vera_B = uniform(out_max, r, bound=math.sqrt(3.0 / r))
        for l in range(NL):
            for short, mod, o, i in TARGETS:
                if short not in targets:
                    continue
                n = "encoder.layer.%d.%s" % (l, mod)
                if kind == "lora":  # non-zero B so that the adapter changes the output
                    self.p[n + ".lora_A"] = randn(r, i, std=0.4)
                    self.p[n + ".lora_B"] = randn(o, r, std=0.2)
                else:
                    self.p[n + ".vera_lambda_d"] = randn(r, std=0.3, mean=0.5)
                    self.p[n + ".vera_lambda_b"] = randn(o, std=0.3, mean=0.5)

    def delta(self, name, x):
        """The adapter's contribution to y = x W^T + b for the layer NAME, as PEFT computes it."""
        if name + ".lora_A" in self.p:  # lora.Linear: lora_B(lora_A(dropout(x))) * scaling
            return (x @ self.p[name + ".lora_A"].T) @ self.p[name + ".lora_B"].T * self.scale
        if name + ".vera_lambda_d" in self.p:  # vera.Linear: lambda_b * B(lambda_d * A(x)), sliced A, B
            W = self.p[name + ".vera_lambda_b"]
            i, o = x.shape[-1], W.shape[0]
            h = (x @ self.vera_A[:, :i].T) * self.p[name + ".vera_lambda_d"]
            return (h @ self.vera_B[:o, :].T) * W
        return 0.0


def forward(base, head, ad, residual, ids, mask):
    """Logits (n, num_labels) of RobertaForSequenceClassification with dropout off."""
    n, T = ids.shape
    W = lambda k: base[k] + residual.get(k, 0.0)  # FedEx's residual lives inside W0
    # create_position_ids_from_input_ids: pad + cumsum over real tokens, pad on pads
    m = (ids != PAD).long()
    pos = torch.cumsum(m, 1) * m + PAD
    x = base["embeddings.word_embeddings.weight"][ids] + base["embeddings.position_embeddings.weight"][pos] \
        + base["embeddings.token_type_embeddings.weight"][torch.zeros_like(ids)]
    x = layer_norm(x, base["embeddings.LayerNorm.weight"], base["embeddings.LayerNorm.bias"])
    neg = (1.0 - mask.to(x.dtype))[:, None, None, :] * float(np.finfo(np.float32).min)
    hd = H // NH

    def lin(l, mod, inp):
        k = "encoder.layer.%d.%s" % (l, mod)
        return inp @ W(k + ".weight").T + base[k + ".bias"] + ad.delta(k, inp)

    for l in range(NL):
        split = lambda t: t.view(n, T, NH, hd).transpose(1, 2)
        q = split(lin(l, "attention.self.query", x))
        k = split(lin(l, "attention.self.key", x))
        v = split(lin(l, "attention.self.value", x))
        s = q @ k.transpose(-1, -2) / math.sqrt(hd) + neg
        ctx = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(n, T, H)
        p = "encoder.layer.%d." % l
        x = layer_norm(lin(l, "attention.output.dense", ctx) + x, base[p + "attention.output.LayerNorm.weight"],
                       base[p + "attention.output.LayerNorm.bias"])
        h = gelu(lin(l, "intermediate.dense", x))
        x = layer_norm(lin(l, "output.dense", h) + x, base[p + "output.LayerNorm.weight"],
                       base[p + "output.LayerNorm.bias"])
    c = torch.tanh(x[:, 0] @ head["classifier.dense.weight"].T + head["classifier.dense.bias"])
    return c @ head["classifier.out_proj.weight"].T + head["classifier.out_proj.bias"]


def loss_fn(logits, labels):
    if logits.shape[1] == 1:  # HF: regression when num_labels == 1, MSELoss on squeezed logits
        return torch.mean((logits[:, 0] - labels) ** 2)
    return torch.nn.functional.cross_entropy(logits, labels.long())


def hf_linear(step):  # transformers.get_linear_schedule_with_warmup's lambda
    if step < ADAM_WARMUP:
        return step / max(1, ADAM_WARMUP)
    return max(0.0, (ADAM_STEPS - step) / max(1, ADAM_STEPS - ADAM_WARMUP))


# ---------------------------------------------------------------- safetensors, written by hand
DT = {np.float32: "F32", np.float16: "F16", np.int32: "I32", np.uint8: "U8", "bf16": "BF16"}


def write_safetensors(path, tensors, meta=None):
    """tensors: list of (name, numpy array) or (name, "bf16", uint16 array of raw bits)."""
    header, blobs, off = {}, [], 0
    for item in tensors:
        name, arr = item[0], item[-1]
        dt = DT["bf16"] if len(item) == 3 else DT[arr.dtype.type]
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # data area 8-byte aligned, so F32 tensors can be used in place
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def f32(t):
    return t.detach().numpy().astype(np.float32)


def bf16_bits(t):
    return t.detach().float().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


# ---------------------------------------------------------------- cases
def run_case(name, base, batch, kind, targets, r, alpha=0.0, rslora=False, freeze_a=False, regression=False,
             residual_on=()):
    ids, mask, labels = batch["ids"], batch["mask"], batch["target" if regression else "label"]
    num_labels = 1 if regression else 3
    # AdamW's first steps move each element by about lr * sign(g): an element whose gradient is within
    # fp32 noise of 0 could go either way in C. Such draws are rare; draw again until there is none.
    for draw in range(1, 100):
        ad = Adapters(kind, targets, r, alpha, rslora)
        head = make_head(num_labels)
        residual = {}
        for k in residual_on:  # a non-symmetric residual (out, in), as FedEx-LoRA's aggregation leaves
            o, i = base[k + ".weight"].shape
            residual[k + ".weight"] = randn(o, i, std=0.2)
        # Trainable tensors in model.c's order: adapters, then the head. FFA-LoRA keeps A frozen.
        train = dict(ad.p)
        train.update(head)
        frozen = {k for k in train if freeze_a and k.endswith(".lora_A")}
        for k, t in train.items():
            t.requires_grad_(k not in frozen)
        init = {k: v.detach().clone() for k, v in train.items()}

        logits = forward(base, head, ad, residual, ids, mask)
        loss = loss_fn(logits, labels)
        loss.backward()
        grads = {k: v.grad.detach().clone() for k, v in train.items() if k not in frozen}
        for v in train.values():
            v.grad = None
        if all(g.abs().min() >= 1e-5 * g.abs().max() for g in grads.values()):
            break

    # How far PyTorch's own fp32 lands from this fp64 reference on the same case: the scale against which
    # test_model.c's tolerances are set (worst |error| over each gradient tensor's largest element).
    def cast(d):
        return {k: v.detach().float().requires_grad_(k not in frozen) for k, v in d.items()}
    ad32 = Adapters.__new__(Adapters)
    ad32.__dict__.update(ad.__dict__)
    ad32.p = cast(ad.p)
    if ad.vera_A is not None:
        ad32.vera_A, ad32.vera_B = ad.vera_A.float(), ad.vera_B.float()
    head32 = cast(head)
    loss_fn(forward({k: v.float() for k, v in base.items()}, head32, ad32,
                    {k: v.float() for k, v in residual.items()}, ids, mask), labels.float()).backward()
    g32 = dict(ad32.p, **head32)
    fp32_err = max(((g32[k].grad.double() - g).abs().max() / g.abs().max()).item() for k, g in grads.items())

    # 10 AdamW steps: torch.optim.AdamW (decoupled decay on every trainable tensor), HF linear schedule
    params = [v for k, v in train.items() if k not in frozen]
    opt = torch.optim.AdamW(params, lr=ADAM_LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=ADAM_WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_linear)
    losses = []
    for _ in range(ADAM_STEPS):
        opt.zero_grad()
        l = loss_fn(forward(base, head, ad, residual, ids, mask), labels)
        l.backward()
        losses.append(l.item())
        opt.step()
        sched.step()

    meta = {"kind": kind, "targets": ",".join(targets), "r": str(r), "alpha": repr(alpha),
            "rslora": str(int(rslora)), "freeze_a": str(int(freeze_a)),
            "config": "model_config_reg.json" if regression else "model_config.json",
            "labels": "target" if regression else "label"}
    out = [(k, f32(v)) for k, v in init.items()]
    if ad.vera_A is not None:
        out += [("vera_A", f32(ad.vera_A)), ("vera_B", f32(ad.vera_B))]
    out += [("residual." + k[:-len(".weight")], f32(v)) for k, v in residual.items()]
    out += [("expect.logits", f32(logits)), ("expect.loss", f32(loss.reshape(1)))]
    out += [("grad." + k, f32(v)) for k, v in grads.items()]
    out += [("expect.losses", np.array(losses, dtype=np.float32)),
            ("expect.lrs", np.array([ADAM_LR * hf_linear(s) for s in range(ADAM_STEPS)], dtype=np.float32))]
    out += [("final." + k, f32(v)) for k, v in train.items()]
    write_safetensors(os.path.join(OUT, "model_case_%s.safetensors" % name), out, meta)
    print("%-10s draw %d  torch fp32 grad error %.1e of max  loss %.6f  logits[0] %s  losses %.5f .. %.5f" %
          (name, draw, fp32_err, loss.item(), np.round(f32(logits[0]), 5), losses[0], losses[-1]))
    return {k: init[k] for k in head}  # the head as the case starts, before the AdamW steps


def main():
    os.makedirs(OUT, exist_ok=True)
    base = make_base()
    # A padded batch: three rows of different lengths, <s> ... </s>, pad id 1 on the right.
    lens, T = [9, 5, 7], 9
    ids = torch.full((3, T), PAD, dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, 0], ids[i, n - 1] = 0, 2
        ids[i, 1:n - 1] = torch.randint(3, CFG["vocab_size"], (n - 2,), generator=gen)
    mask = (ids != PAD).to(torch.uint8)
    batch = {"ids": ids, "mask": mask, "label": torch.tensor([0.0, 2.0, 1.0]),
             "target": torch.tensor([0.5, 3.25, 1.75])}

    for nl, fn in ((3, "model_config.json"), (1, "model_config_reg.json")):
        with open(os.path.join(OUT, fn), "w") as f:
            json.dump(config_json(nl), f, indent=2)
            f.write("\n")
    write_safetensors(os.path.join(OUT, "model_base.safetensors"), [(k, f32(v)) for k, v in base.items()])
    write_safetensors(os.path.join(OUT, "model_batch.safetensors"),
                      [("ids", ids.numpy().astype(np.int32)), ("mask", mask.numpy()),
                       ("label", f32(batch["label"])), ("target", f32(batch["target"]))])

    head = run_case("lora_qv", base, batch, "lora", ["query", "value"], r=4, alpha=8.0)
    run_case("lora_all", base, batch, "lora", [t[0] for t in TARGETS], r=4, alpha=4.0, rslora=True,
             regression=True)
    run_case("ffa", base, batch, "lora", ["query", "value"], r=4, alpha=16.0, freeze_a=True)
    run_case("vera", base, batch, "vera", [t[0] for t in TARGETS], r=4)
    run_case("residual", base, batch, "lora", ["query", "intermediate.dense"], r=2, alpha=4.0,
             residual_on=["encoder.layer.0.attention.self.query", "encoder.layer.1.intermediate.dense"])

    # Half-precision checkpoints for the loader: F16 with HF's "roberta." prefix, a classifier and a
    # pooler to ignore; BF16 without the prefix, as a masked-LM checkpoint (lm_head.*, no classifier).
    for sub, fn in (("model_f16", "F16"), ("model_bf16", "BF16")):
        os.makedirs(os.path.join(OUT, sub), exist_ok=True)
        with open(os.path.join(OUT, sub, "config.json"), "w") as f:
            json.dump(config_json(3), f, indent=2)
            f.write("\n")
        if fn == "F16":
            t = [("roberta." + k, v.numpy().astype(np.float16)) for k, v in base.items()]
            t += [(k, v.detach().numpy().astype(np.float16)) for k, v in head.items()]
            t += [("roberta.pooler.dense.weight", np.zeros((H, H), np.float16)),
                  ("roberta.pooler.dense.bias", np.zeros(H, np.float16))]
        else:
            t = [(k, "bf16", bf16_bits(v)) for k, v in base.items()]
            t += [("lm_head.dense.weight", "bf16", bf16_bits(randn(H, H))),
                  ("lm_head.bias", "bf16", bf16_bits(randn(CFG["vocab_size"])))]
        write_safetensors(os.path.join(OUT, sub, "model.safetensors"), t, {"format": "pt"})
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs
                if "model_" in os.path.join(d, f))
    print("fixtures: %d bytes in tests/fixtures/model_*" % total)


if __name__ == "__main__":
    main()
