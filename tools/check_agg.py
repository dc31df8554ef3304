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
      SORF-VeRA: mean_i(S Γ(b) B Λ_i A) - S Γ(b') B Λ' A, Λ = s G(θ), with S rebuilt densely from the
             signs and permutations in the adapter file (and checked orthonormal), b the clients' shared
             Γ and b', Λ' the server's refit as saved
    for FedEx, and zero for the other methods. For SORF-VeRA the refit itself is recomputed too (numpy's
    SVD of the clients' mean update, each right singular vector's largest entry made positive, then the
    VeRA fork's fit of b, s and θ, or with --sorf-refit polar the scaled rotation nearest the mean Λ),
    and the head is checked as the mean. B̄, Ā, b̄, d̄ are the global adapter's tensors as saved
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
        if e["dtype"] not in ("F32", "I32"):
            sys.exit("%s: %s is %s; this checker reads F32 and I32 only" % (path, name, e["dtype"]))
        a, b = e["data_offsets"]
        dt = np.float32 if e["dtype"] == "F32" else np.int32
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dt).reshape(e["shape"])
        if dt == np.float32:
            out[name] = out[name].astype(np.float64)
    return out


def rel(got, want):
    scale = np.abs(want).max()
    return np.abs(got - want).max() / (scale if scale > 0 else 1.0)


# ---------------------------------------------------------------- SORF-VeRA, from its definition
def greedy(d):
    parts = []
    while d:
        parts.append(1 << (d.bit_length() - 1))
        d -= parts[-1]
    return parts


def hadamard(n):
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def dense_s(signs, perm):
    """S = B_P2 B_P1 B_P0, B_Pt = B_t[perm][:, perm], B_t the block diagonal of D1 H D2 H D3 per greedy block."""
    d = signs.shape[2]
    S = np.eye(d)
    for t in range(3):
        B, o = np.zeros((d, d)), 0
        for n in greedy(d):
            D1, D2, D3 = (np.diag(signs[t, k, o:o + n]) for k in range(3))
            B[o:o + n, o:o + n] = D1 @ hadamard(n) @ D2 @ hadamard(n) @ D3
            o += n
        p = perm[t]
        S = B[p][:, p] @ S
    return S


def givens(theta, r):
    """G(θ): the rotations of pairs (0,1), (0,2), ..., (r-2,r-1) applied to the identity's rows, last first."""
    pairs = [(p, q) for p in range(r - 1) for q in range(p + 1, r)]
    G = np.eye(r)
    for k in reversed(range(len(pairs))):
        p, q = pairs[k]
        c, s = np.cos(theta[k]), np.sin(theta[k])
        G[[p, q]] = np.stack([c * G[p] - s * G[q], s * G[p] + c * G[q]])
    return G


def gamma(b):
    h = b.shape[0] // 2
    G = np.zeros((2 * h, 2 * h))
    for j in range(h):
        a, c = b[j], b[h + j]
        G[2 * j:2 * j + 2, 2 * j:2 * j + 2] = [[a, -c], [c, a]]
    return G


def nearest_rotation(L, r):
    """The VeRA fork's fit_d tail: s, θ of the proper scaled rotation nearest L."""
    P, D, QT = np.linalg.svd(L)
    if np.linalg.det(P @ QT) < 0:
        P[:, -1], D[-1] = -P[:, -1], -D[-1]
    W = P @ QT
    th = []
    for p in range(r - 1):
        for q in range(p + 1, r):
            t = np.arctan2(W[q, p], W[p, p])
            th.append(t)
            c, s = np.cos(t), np.sin(t)
            W[[p, q]] = np.stack([c * W[p] + s * W[q], -s * W[p] + c * W[q]])
    return D.mean(), np.array(th)


def refit(S, gb, Bs, As, lam_mean, r, polar):
    """The server's new b, s, θ from the clients' mean Λ (and their shared Γ(gb))."""
    if polar:
        s, th = nearest_rotation(lam_mean, r)
        return gb, s, th
    dW = S @ gamma(gb) @ Bs @ lam_mean @ As
    U, sv, VT = np.linalg.svd(dW, full_matrices=False)
    U, sv, V = U[:, :r], sv[:r], VT[:r].T
    for j in range(r):  # each right singular vector's largest entry positive
        if V[np.argmax(np.abs(V[:, j])), j] < 0:
            U[:, j], V[:, j] = -U[:, j], -V[:, j]
    T = S.T @ (U * sv[None, :])
    h = Bs.shape[0] // 2
    b = np.zeros(2 * h)
    for j in range(h):  # least squares of [[a, -c], [c, a]] B[2j:2j+2] = T[2j:2j+2]
        b0, b1, t0, t1 = Bs[2 * j], Bs[2 * j + 1], T[2 * j], T[2 * j + 1]
        M = np.stack([np.stack([b0, b1], 1).reshape(-1), np.stack([-b1, b0], 1).reshape(-1)], 1)
        ac = np.linalg.lstsq(M, np.stack([t0, t1], 1).reshape(-1), rcond=None)[0]
        b[j], b[h + j] = ac
    s, th = nearest_rotation(V.T @ np.linalg.pinv(As), r)
    return b, s, th


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
    agg = lines[0].get("agg", cfg["agg"]) if lines else cfg["agg"]  # the canonical name (the settings keep it as given)
    sorf, vera = agg in ("sorf-vera", "fedex-sorf-vera"), agg.endswith("-vera")
    polar = cfg.get("sorf-refit") == "polar"
    r = cfg["vera-r"] if sorf else cfg["lora-r"]
    s = cfg["lora-alpha"] / (np.sqrt(r) if cfg["rslora"] else r)
    exact = agg in ("fedex", "fedex-vera", "fedex-sorf-vera")
    with open(os.path.join(run, "adapter_config.json")) as f:
        conv1d = bool(json.load(f).get("fan_in_fan_out", False))  # every adapted layer is a Conv1D (GPT-2)
    prev, worst_mean, worst_res, worst_refit, worst_ortho, worst_gap = None, 0.0, 0.0, 0.0, 0.0, 0.0
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
        mixers = {}
        for k, g in glob.items():
            if k in ("base_model.vera_A", "base_model.vera_B") or ".sorf_" in k:
                if k.endswith(".signs"):  # SORF-VeRA's mixer S, rebuilt densely from its signs and permutations
                    d = g.shape[2]
                    S = dense_s(g, glob[k[:-len(".signs")] + ".perm"])
                    worst_ortho = max(worst_ortho, np.abs(S @ S.T - np.eye(d)).max())
                    mixers[d] = S
                continue  # frozen and shared, or SORF-VeRA's refitted state (checked below)
            worst_mean = max(worst_mean, rel(g, mean([c[k] for c in cl])))
        for name, acc in res.items():
            mod = "base_model.model." + name[:-len(".weight")]
            out_in = acc.shape[::-1] if conv1d else acc.shape  # the layer's W (out, in)
            if sorf:
                A, B = glob["base_model.vera_A"], glob["base_model.vera_B"]
                out, inn = out_in  # the layer's (out, in): GPT-2's Conv1D residuals are stored (in, out)
                Bs, As, S = B[:out, :r], A[:r, :inn], mixers[out]
                bb = lambda t: np.concatenate([t[mod + ".sorf_b_real"], t[mod + ".sorf_b_imag"]])
                lam = lambda t: t[mod + ".sorf_d_scale"].reshape(-1)[0] * givens(t[mod + ".sorf_d_angles"], r)
                gb = bb(cl[0])
                if any(np.abs(bb(c) - gb).max() > 0 for c in cl):
                    sys.exit("%s: the clients' Gamma of %s differ: it is frozen on clients" % (rdir, mod))
                lam_mean = mean([lam(c) for c in cl])
                dw = lambda b, L: S @ gamma(b) @ Bs @ L @ As
                mean_dw = dw(gb, lam_mean)
                want = mean_dw - dw(bb(glob), lam(glob))
                worst_gap = max(worst_gap, rel(dw(bb(glob), lam(glob)), mean_dw))
                b2, s2, th2 = refit(S, gb, Bs, As, lam_mean, r, polar)
                got_fit = np.concatenate([bb(glob), glob[mod + ".sorf_d_scale"].reshape(-1), glob[mod + ".sorf_d_angles"]])
                worst_refit = max(worst_refit, rel(got_fit, np.concatenate([b2, [s2], th2])))
            elif vera:
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
        print("round %d: %d clients, global = mean: %.2e, round residual: %.2e%s" % (
            rd, len(ids), worst_mean, worst_res,
            ", refit: %.2e, S orthonormal: %.1e, refit's dW off the mean by %.2e" % (worst_refit, worst_ortho, worst_gap) if sorf else ""))
    print("%s (%s): %d rounds; worst: global adapter %.2e, residual %.2e (%s)" % (
        run, agg, len(lines), worst_mean, worst_res, "relative" if exact else "absolute, want 0"))


if __name__ == "__main__":
    main()
