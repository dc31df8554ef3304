#!/usr/bin/python3
"""tests/make_llama_generate_fixtures.py: golden greedy and beam-search outputs on tiny random Llamas of
tests/make_llama_fixtures.py (tests/fixtures/llama_<shape>/: a, grouped-query with an untied head; d, llama3
rope_scaling with every bias; f, Mistral's sliding window of 6, which prompts plus 10 new tokens pass), for
tests/test_generate.c. The logits come from that script's float64 PyTorch Llama (a full forward over the
whole row at every step: no cache), the search and the noise filter from
tests/make_gpt2_generate_fixtures.py (tests/make_generate_fixtures.py's Python implementation of Hugging
Face generate()); neither uses C code.
Writes tests/fixtures/llama_generate.txt. Run from the repository root (after make_llama_fixtures.py):
/usr/bin/python3 tests/make_llama_generate_fixtures.py"""
import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_gpt2_generate_fixtures as gen  # noqa: E402
import make_llama_fixtures as ref  # noqa: E402


class Llama:
    """The model of folder llama_<shape>: logits of the row's last position, float64."""

    def __init__(self, shape):
        folder = os.path.join(gen.FIX, "llama_" + shape)
        with open(os.path.join(folder, "config.json")) as f:
            self.c = json.load(f)
        self.base = gen.read_safetensors(os.path.join(folder, "model.safetensors"))
        eos = self.c["eos_token_id"]
        self.V, self.P, self.memo = self.c["vocab_size"], self.c["max_position_embeddings"], {}
        self.eos = eos[0] if isinstance(eos, list) else eos

    def logits(self, row):
        key = tuple(row)
        if key not in self.memo:
            ids = torch.tensor([row])
            with torch.no_grad():
                z = ref.forward(self.c, self.base, {}, 0.0, ids, torch.ones(1, len(row), dtype=torch.uint8))
            self.memo[key] = z[0, -1].tolist()
        return self.memo[key]


def main():
    models = {shape: Llama(shape) for shape in ("a", "d", "f")}
    gen.write_cases("llama", models, os.path.join(gen.FIX, "llama_generate.txt"), random.Random(20261204))


if __name__ == "__main__":
    main()
