#!/usr/bin/python3
"""tests/make_generate_fixtures.py: golden outputs for generate.c, from a separate Python implementation of
Hugging Face generate()'s greedy search and beam search (BeamSearchScorer as of transformers 4.35 to 4.4x:
the length penalty over the generated length with the end token counted, the early-stopping test for
early_stopping False / True / "never", NoRepeatNGramLogitsProcessor over the whole row) plus the generated-
tokens-only n-gram rule, run over a toy model that tests/test_generate.c computes the same way in C.

The toy model: the logits of the next token depend on the last token (a fixed random bigram table, so the
search falls into loops that the n-gram rule has to break), on a hash of the whole row (so a cache that
holds the wrong row gives other logits), and on the row's length for the end token (early or late ends).
All its arithmetic is exact in float64 until the final rounding to float32, so C and Python agree bit for
bit. Writes tests/fixtures/generate_toy.txt. Run: /usr/bin/python3 <this file>."""
import math
import os
import random
import struct

M64 = (1 << 64) - 1


def mix64(x):
    """splitmix64's finaliser on x + golden gamma (util.c's seeding uses the same constants)."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def u01(z):
    return (z >> 11) * (1.0 / 9007199254740992.0)


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


class Toy:
    def __init__(self, seed, vocab, eos, eos_bias, eos_slope, quantised=0):
        self.seed, self.V, self.eos, self.bias, self.slope = seed, vocab, eos, eos_bias, eos_slope
        self.q = quantised  # whole-number logits: many exact ties, to pin down their order

    def logits(self, row):
        h = self.seed
        for t in row:
            h = mix64(h ^ (t + 1))
        a = row[-1]
        out = []
        for v in range(self.V):
            x = 5.0 * u01(mix64((self.seed * 0x100000001B3 + a * self.V + v) & M64)) + 1.5 * u01(mix64((h + v) & M64))
            if v == self.eos:
                x += self.bias + self.slope * len(row)
            out.append(f32(math.floor(x) if self.q else x))
        return out


def log_softmax(x):
    m = max(x)
    s = 0.0
    for v in x:
        s += math.exp(v - m)
    ls = math.log(s)
    return [v - m - ls for v in x]


def banned_tokens(row, n):
    """Tokens t such that (last n-1 tokens of row, t) already occurs in row."""
    if n <= 0 or len(row) + 1 < n:
        return set()
    seen = {}
    for i in range(len(row) - n + 1):
        seen.setdefault(tuple(row[i:i + n - 1]), set()).add(row[i + n - 1])
    key = tuple(row[len(row) - (n - 1):]) if n > 1 else ()
    return seen.get(key, set())


def ngram_row(prompt, gen, cfg):
    return gen if cfg["genonly"] else prompt + gen


def greedy(model, prompt, cfg):
    gen = []
    total = 0.0
    while True:
        x = model.logits(prompt + gen)
        lp = log_softmax(x)
        proc = list(x)
        for t in banned_tokens(ngram_row(prompt, gen, cfg), cfg["nrep"]):
            proc[t] = -math.inf
        best = max(range(len(proc)), key=lambda v: (proc[v], -v))  # the first of equal maxima
        gen.append(best)
        total += lp[best]
        if best == cfg["eos"] or len(gen) == cfg["max_new"]:
            return gen, total


class Kept:
    """The n-best list of finished hypotheses, as BeamHypotheses keeps it."""

    def __init__(self, num_beams, lp):
        self.B, self.lp, self.items, self.worst = num_beams, lp, [], 1e9

    def add(self, tokens, sum_logprobs, gen_len, ended):
        score = sum_logprobs / (gen_len ** self.lp)
        if len(self.items) < self.B or score > self.worst:
            self.items.append((score, list(tokens), ended))
            if len(self.items) > self.B:
                order = sorted((s, i) for i, (s, _, _) in enumerate(self.items))
                del self.items[order[0][1]]
                self.worst = order[1][0]
            else:
                self.worst = min(score, self.worst)

    def done(self, best_sum, gen_len, cfg):
        if len(self.items) < self.B:
            return False
        if cfg["early"] == 1:
            return True
        if cfg["early"] == 2 and self.lp > 0:
            return self.worst >= best_sum / (cfg["max_new"] ** self.lp)
        return self.worst >= best_sum / (gen_len ** self.lp)


def beam_search(model, prompt, cfg, eos_below_top=False):
    """EOS_BELOW_TOP: also finish beams on end tokens ranked below the first B (not HF's rule; only to find
    the cases where that rule decides the answer)."""
    B, V, eos = cfg["beams"], model.V, cfg["eos"]
    beams = [(0.0 if b == 0 else -1e9, []) for b in range(B)]
    kept = Kept(B, cfg["lp"])
    done = False
    steps = 0
    while True:
        scored = []
        for b, (s, gen) in enumerate(beams):
            lp = log_softmax(model.logits(prompt + gen))
            for t in banned_tokens(ngram_row(prompt, gen, cfg), cfg["nrep"]):
                lp[t] = -math.inf
            for t in range(V):
                scored.append((s + lp[t], b * V + t))
        scored.sort(key=lambda c: (-c[0], c[1]))
        top = scored[:2 * B]
        nxt = []
        for rank, (s, idx) in enumerate(top):
            b, t = divmod(idx, V)
            if t == eos:
                if rank < B or eos_below_top:
                    kept.add(beams[b][1], s, len(beams[b][1]) + 1, True)
            else:
                nxt.append((s, beams[b][1] + [t]))
            if len(nxt) == B:
                break
        steps += 1
        done = done or kept.done(top[0][0], steps, cfg)
        beams = nxt
        if done or steps == cfg["max_new"]:
            break
    if not done:
        for s, gen in beams:
            kept.add(gen, s, len(gen), False)
    best = sorted(kept.items, key=lambda e: e[0]).pop()  # stable: the last kept of equal scores
    score, tokens, ended = best
    return tokens + ([eos] if ended else []), score


def main():
    rnd = random.Random(20241009)
    eos_profiles = {"early": (-1.0, 0.35), "late": (-4.0, 0.12), "rare": (-30.0, 0.0)}
    cases = []

    def add(name, **kw):
        cfg = dict(seed=1, V=24, eos=3, profile="late", beams=1, max_new=16, lp=1.0, early=0, nrep=0, genonly=0, q=0)
        cfg.update(kw)
        cases.append((name, cfg))

    # Every beam count with the E2E setting and with HF's defaults.
    for B in range(1, 11):
        add(f"e2e_b{B}", seed=100 + B, V=40, beams=B, max_new=24, lp=0.8, nrep=4, genonly=1)
        add(f"hf_b{B}", seed=200 + B, beams=B)
    # No end token at all, and an end token the model almost never picks.
    for B in (1, 2, 5, 10):
        add(f"noeos_b{B}", seed=300 + B, eos=-1, beams=B, max_new=12)
        add(f"rare_b{B}", seed=310 + B, profile="rare", beams=B, max_new=12, early=2)
    # The n-gram rule over the whole row and over the generated tokens, sizes 1 to 4, with a prompt that
    # repeats itself so that the two rules differ.
    for n in (1, 2, 3, 4):
        for go in (0, 1):
            for B in (1, 4):
                add(f"nrep{n}_go{go}_b{B}", seed=400 + 10 * n + 2 * go + B, beams=B, nrep=n, genonly=go,
                    prompt=[5, 6, 7, 5, 6, 7, 5, 6], max_new=20)
    # Early stopping modes against length penalties of both signs.
    for early in (0, 1, 2):
        for lp in (-1.0, 0.0, 0.5, 1.0, 2.0):
            for prof in ("early", "late"):
                add(f"stop{early}_lp{lp}_{prof}", seed=500 + early * 50 + int(lp * 10) + len(prof), beams=4,
                    lp=lp, early=early, profile=prof, max_new=18)
    # Where the three early-stopping modes give three answers (or two): found by searching seeds.
    found = 0
    for seed in range(600, 2000):
        if found >= 12:
            break
        B, lp = 2 + seed % 4, (0.5, 1.0, 2.0, -0.5)[(seed // 4) % 4]
        model = Toy(seed, 24, 3, *eos_profiles["early"])
        prompt = [seed % 24, (seed // 24) % 24]
        outs = [beam_search(model, prompt, dict(beams=B, max_new=14, lp=lp, early=e, nrep=0, genonly=0, eos=3))[0]
                for e in (0, 1, 2)]
        if len({tuple(o) for o in outs}) > 1:
            found += 1
            for e in (0, 1, 2):
                add(f"stopmodes{seed}_e{e}", seed=seed, beams=B, lp=lp, early=e, profile="early", max_new=14,
                    prompt=prompt)
    # Where an end token ranked below the first B candidates would have won, had it been kept.
    found = 0
    for seed in range(5000, 9000):
        if found >= 12:
            break
        B, lp = 2 + seed % 5, (0.5, 1.0, 2.0)[(seed // 5) % 3]
        model = Toy(seed, 24, 3, *eos_profiles["early"])
        prompt = [seed % 24]
        cfg = dict(beams=B, max_new=10, lp=lp, early=0, nrep=0, genonly=0, eos=3)
        if beam_search(model, prompt, cfg)[0] != beam_search(model, prompt, cfg, eos_below_top=True)[0]:
            found += 1
            add(f"eosrank{seed}", seed=seed, beams=B, lp=lp, profile="early", max_new=10, prompt=prompt)
    # Whole-number logits: exact ties everywhere, ordered by (beam, token) in both implementations.
    for k in range(24):
        add(f"ties{k}", seed=3000 + k, V=rnd.choice([12, 24]), beams=rnd.randint(1, 6), max_new=rnd.randint(4, 16),
            lp=rnd.choice([0.0, 1.0]), early=rnd.randint(0, 2), nrep=rnd.choice([0, 2]), genonly=rnd.randint(0, 1),
            profile=rnd.choice(["early", "late"]), q=1)
    # A random sweep over everything.
    for k in range(160):
        add(f"rand{k}", seed=1000 + k, V=rnd.choice([12, 24, 40, 64]), beams=rnd.randint(1, 10),
            max_new=rnd.randint(1, 30), lp=rnd.choice([-0.5, 0.0, 0.6, 0.8, 1.0, 1.5]), early=rnd.randint(0, 2),
            nrep=rnd.choice([0, 0, 1, 2, 3, 4]), genonly=rnd.randint(0, 1),
            profile=rnd.choice(["early", "late", "late", "rare"]))

    out = ["# generate_toy.txt, written by tests/make_generate_fixtures.py; do not edit.",
           "# case NAME seed V eos eos_bias eos_slope beams max_new lp early nrep genonly q (early: 0 False, 1 True, 2 never; q: whole-number logits)",
           "# prompt N ids / want N ids / score S (beam: the chosen hypothesis's score; greedy: its sum of log p)"]
    for name, cfg in cases:
        V = cfg["V"]
        if cfg["eos"] >= V:
            cfg["eos"] = V - 1
        bias, slope = eos_profiles[cfg["profile"]]
        model = Toy(cfg["seed"], V, cfg["eos"], bias, slope, cfg["q"])
        prompt = cfg.get("prompt") or [rnd.randrange(V) for _ in range(rnd.randint(1, 8))]
        if cfg["beams"] == 1:
            tokens, score = greedy(model, prompt, cfg)
        else:
            tokens, score = beam_search(model, prompt, cfg)
        out.append(f"case {name} {cfg['seed']} {V} {cfg['eos']} {bias!r} {slope!r} {cfg['beams']} {cfg['max_new']} "
                   f"{cfg['lp']!r} {cfg['early']} {cfg['nrep']} {cfg['genonly']} {cfg['q']}")
        out.append(f"prompt {len(prompt)} " + " ".join(map(str, prompt)))
        out.append(f"want {len(tokens)} " + " ".join(map(str, tokens)))
        out.append(f"score {score!r}")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "generate_toy.txt")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {len(cases)} cases to {path}")


if __name__ == "__main__":
    main()
