#!/usr/bin/python3
"""tools/check_agg.py RUN: recomputes every round's aggregation of a `fedex train --save-clients` run from
its saved files alone, with numpy in float64, independently of the C code, and prints how far the saved
global state is from it.

For each round R it reads the clients' adapters (RUN/rounds/R/client_C/adapter_model.safetensors), the
global adapter and the accumulated residual (RUN/rounds/R/global/), the clients' sample counts (from
RUN/metrics.jsonl, for --weighted) and the run's options (RUN/fedex_run.json), then checks:
  - the global adapter is the (weighted) mean of the clients' tensors;
  - the round's residual (this round's residual.safetensors minus the previous round's) is
      LoRA:  s * (mean_i(B_i A_i) - B̄ Ā),  s = alpha/r (alpha/sqrt(r) with --rslora)
      VeRA:  mean_i(diag(b_i) B diag(d_i) A) - diag(b̄) B diag(d̄) A  (A, B the shared projections)
    for FedEx, and zero for the other methods. B̄, Ā, b̄, d̄ are the global adapter's tensors as saved
    (float32 means), so that base + residual + the global adapter's update is the clients' mean model.
    With "fan_in_fan_out": true in the adapter's config (GPT-2's Conv1D layers), the residual is stored in
    the Conv1D weight's own (in, out) orientation, so the formula's (out, in) matrix is compared transposed.
Errors are relative to the largest entry of the expected tensor, so they read as digits lost; the files
are float32, so about 1e-7 (a mean) to 1e-6 (a difference of two accumulated residuals) is exact.

Only numpy is needed: /usr/bin/python3 tools/check_agg.py runs/rte"""
import json
import os
import struct
import sys

import numpy as np


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    out = {}
    for name, e in json.loads(raw[8:8 + n]).items():
        if name == "__metadata__":
            continue
        if e["dtype"] != "F32":
            sys.exit("%s: %s is %s; this checker reads F32 only" % (path, name, e["dtype"]))
        a, b = e["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], np.float32).reshape(e["shape"]).astype(np.float64)
    return out


def rel(got, want):
    scale = np.abs(want).max()
    return np.abs(got - want).max() / (scale if scale > 0 else 1.0)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: tools/check_agg.py RUN   (a folder written by fedex train --save-clients)")
    run = sys.argv[1]
    settings = os.path.join(run, "fedex_run.json")
    if not os.path.exists(settings):  # runs saved before the settings had their own name
        settings = os.path.join(run, "config.json")
    with open(settings) as f:
        cfg = json.load(f)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        lines = [json.loads(l) for l in f if l.strip()]
    agg, vera = cfg["agg"], cfg["agg"].endswith("-vera")
    r = cfg["lora-r"]
    s = cfg["lora-alpha"] / (np.sqrt(r) if cfg["rslora"] else r)
    exact = agg in ("fedex", "fedex-vera")
    with open(os.path.join(run, "adapter_config.json")) as f:
        conv1d = bool(json.load(f).get("fan_in_fan_out", False))  # every adapted layer is a Conv1D (GPT-2)
    prev, worst_mean, worst_res = None, 0.0, 0.0
    for line in lines:
        rd = line["round"]
        rdir = os.path.join(run, "rounds", str(rd))
        if not os.path.isdir(rdir):
            sys.exit("%s: missing (was the run made with --save-clients?)" % rdir)
        ids = [c["id"] for c in line["clients"]]
        w = np.array([c["samples"] if cfg["weighted"] else 1.0 for c in line["clients"]], np.float64)
        w /= w.sum()
        cl = [load(os.path.join(rdir, "client_%d" % i, "adapter_model.safetensors")) for i in ids]
        glob = load(os.path.join(rdir, "global", "adapter_model.safetensors"))
        res = load(os.path.join(rdir, "global", "residual.safetensors"))
        mean = lambda xs: sum(wi * x for wi, x in zip(w, xs))
        for k, g in glob.items():
            if k in ("base_model.vera_A", "base_model.vera_B"):
                continue  # frozen, shared: not aggregated
            worst_mean = max(worst_mean, rel(g, mean([c[k] for c in cl])))
        for name, acc in res.items():
            mod = "base_model.model." + name[:-len(".weight")]
            out_in = acc.shape[::-1] if conv1d else acc.shape  # the layer's W (out, in)
            if vera:
                A, B = glob["base_model.vera_A"], glob["base_model.vera_B"]
                d = [c[mod + ".vera_lambda_d"] for c in cl]
                b = [c[mod + ".vera_lambda_b"] for c in cl]
                Bs, As = B[:out_in[0], :], A[:, :out_in[1]]
                dw = lambda bi, di: (bi[:, None] * Bs * di[None, :]) @ As
                want = mean([dw(bi, di) for bi, di in zip(b, d)]) - dw(glob[mod + ".vera_lambda_b"],
                                                                       glob[mod + ".vera_lambda_d"])
            else:
                A = [c[mod + ".lora_A.weight"] for c in cl]
                B = [c[mod + ".lora_B.weight"] for c in cl]
                want = s * (mean([bi @ ai for bi, ai in zip(B, A)])
                            - glob[mod + ".lora_B.weight"] @ glob[mod + ".lora_A.weight"])
            if conv1d:
                want = want.T
            if not exact:
                want = np.zeros_like(want)
            got = acc - (prev[name] if prev is not None else 0.0)
            if got.shape != want.shape:
                sys.exit("%s: %s has shape %s, the adapters give %s" % (rdir, name, got.shape, want.shape))
            worst_res = max(worst_res, rel(got, want) if exact else np.abs(got).max())
        prev = res
        print("round %d: %d clients, global = mean: %.2e, round residual: %.2e" % (rd, len(ids), worst_mean, worst_res))
    print("%s (%s): %d rounds; worst: global adapter %.2e, residual %.2e (%s)" % (
        run, agg, len(lines), worst_mean, worst_res, "relative" if exact else "absolute, want 0"))


if __name__ == "__main__":
    main()
