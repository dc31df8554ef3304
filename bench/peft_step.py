#!/usr/bin/env python3
"""bench/peft_step.py: the paper's code path, timed on the same GPU as bench/bench_gpu.c: PyTorch, Hugging
Face transformers and PEFT. RobertaForSequenceClassification from a config.json (random weights, made by
transformers' own initialisation), LoRA r=4 alpha 8 dropout 0.1 on query,value through peft.get_peft_model
(task SEQ_CLS, so the classifier head trains too), AdamW lr 1e-3 weight decay 0.01, batches of 128 rows of
128 random tokens (or random lengths, padded, with --padded). Training steps (forward, backward, optimizer)
and evaluation batches are timed with CUDA events, median of --steps after --warmup; one line per run:
    peft_step PREC MODE n T samples_per_s S ms M
It measures speed only; it shares no code with fedex. It needs torch, transformers and peft (the device
machine's python3 has them; this machine's does not).

Precisions: bf16 = torch.autocast(bfloat16); fp16 = torch.autocast(float16) with a GradScaler, as the
paper's code trains; tf32 = fp32 with TF32 matrix products; fp32 = TF32 off.

usage: peft_step.py CONFIG_JSON [--batch 128] [--tokens 128] [--steps 20] [--warmup 5]
                    [--precisions bf16,fp16,tf32,fp32] [--padded] [--attn sdpa|eager] [--device cuda]"""
import argparse
import contextlib
import math
import statistics
import sys
import time

try:
    import torch
except ImportError as e:        # reported by main() as a skip, as a missing transformers or peft is
    torch, MISSING = None, e

ROTATE = 4          # batches the timed steps cycle through
RANK, ALPHA, DROPOUT = 4, 8, 0.1
LR, WD = 1e-3, 0.01


def make_batches(cfg, n, T, padded, device, gen):
    """ROTATE batches: <s> random body from [4, vocab) </s>, then pad; lengths T, or uniform in [8, T]
    (as fedex's synthetic task) padded to the longest row; random binary labels."""
    out = []
    for _ in range(ROTATE):
        ids = torch.randint(4, cfg.vocab_size, (n, T), generator=gen)
        lens = torch.randint(8, T + 1, (n,), generator=gen) if padded else torch.full((n,), T)
        Tb = int(lens.max())
        ids = ids[:, :Tb].clone()
        pos = torch.arange(Tb).expand(n, Tb)
        mask = (pos < lens[:, None]).long()
        ids[:, 0] = cfg.bos_token_id if cfg.bos_token_id is not None else 0
        ids[torch.arange(n), lens - 1] = cfg.eos_token_id if cfg.eos_token_id is not None else 2
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, cfg.pad_token_id))
        labels = torch.randint(0, 2, (n,), generator=gen)
        out.append({k: v.to(device) for k, v in
                    {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()})
    return out


def build(config_path, attn, device):
    import peft
    import transformers
    cfg = transformers.RobertaConfig.from_json_file(config_path)
    cfg.num_labels = 2
    kw = {"attn_implementation": attn} if attn else {}
    model = transformers.AutoModelForSequenceClassification.from_config(cfg, **kw).float()
    lcfg = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                           target_modules=["query", "value"])
    model = peft.get_peft_model(model, lcfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD)
    return cfg, model, opt, sum(p.numel() for p in params)


class Timer:
    """CUDA events on a GPU (the region's device time, after its work is queued and done), the host
    clock after a synchronise elsewhere."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def start(self):
        if self.cuda:
            self.e0, self.e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.e0.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.e1.record()
            self.e1.synchronize()
            return self.e0.elapsed_time(self.e1) * 1e-3
        return time.perf_counter() - self.t0


def time_runs(model, opt, batches, prec, train, warmup, steps, device):
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
    scaler = torch.amp.GradScaler(dev_type) if prec == "fp16" and train else None
    timer, times = Timer(device), []
    model.train(train)
    for i in range(warmup + steps):
        b = batches[i % ROTATE]
        timer.start()
        with torch.autocast(dev_type, dtype=amp) if amp else contextlib.nullcontext():
            if train:
                loss = model(**b).loss
            else:
                with torch.no_grad():
                    loss = model(**b).loss
        if train:
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            opt.zero_grad(set_to_none=True)
        dt = timer.stop()
        if not math.isfinite(loss.item()):
            sys.exit(f"peft_step: {prec} step {i}: loss {loss.item()}")
        if i >= warmup:
            times.append(dt)
    return statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precisions", default="bf16,fp16,tf32,fp32")
    ap.add_argument("--padded", action="store_true", help="random lengths in [8, T], padded")
    ap.add_argument("--attn", default=None, help="transformers' attn_implementation (default: its own)")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    precs = a.precisions.split(",")
    bad = [p for p in precs if p not in ("bf16", "fp16", "tf32", "fp32")]
    if bad or a.batch < 1 or a.tokens < 8 or a.steps < 1 or a.warmup < 0:
        sys.exit(f"peft_step: bad arguments (precisions {bad}, batch {a.batch}, tokens {a.tokens})")
    if torch is None:
        print(f"skipped: peft_step ({MISSING})")
        return
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: peft_step (torch sees no CUDA device)")
        return
    try:
        import peft
        import transformers
    except ImportError as e:
        print(f"skipped: peft_step ({e})")
        return
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(f"peft_step: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"{name}")
    results = []
    for prec in precs:
        if prec == "fp16" and not a.device.startswith("cuda"):
            print("skipped: peft_step fp16 (a GradScaler needs a GPU)")
            continue
        torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
        torch.backends.cudnn.allow_tf32 = prec == "tf32"
        torch.manual_seed(0)
        cfg, model, opt, ntrain = build(a.config, a.attn, a.device)
        gen = torch.Generator().manual_seed(1)
        batches = make_batches(cfg, a.batch, a.tokens, a.padded, a.device, gen)
        T = batches[0]["input_ids"].shape[1]
        if prec == precs[0]:
            print(f"peft_step: {ntrain} trainable parameters; attention {model.config._attn_implementation}; "
                  f"batch {a.batch} x {T}{' padded' if a.padded else ''}")
        for train in (True, False):
            med, lo, hi = time_runs(model, opt, batches, prec, train, a.warmup, a.steps, a.device)
            results.append((prec, "train" if train else "eval", a.batch, T, med, lo, hi))
            print(f"peft_step {prec} {'train' if train else 'eval'} {a.batch} {T} samples_per_s "
                  f"{a.batch / med:.1f} ms {med * 1e3:.3f} (min {lo * 1e3:.3f}, max {hi * 1e3:.3f})", flush=True)
        del model, opt, batches
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if a.device.startswith("cuda"):
        print(f"peft_step: peak device memory {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
