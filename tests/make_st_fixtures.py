#!/usr/bin/python3
"""tests/make_st_fixtures.py: writes the safetensors fixtures of tests/test_safetensors.c, independently
of fedex's C code: the file is laid out by hand from the format description (u64 header length, compact
JSON header padded with spaces to 8 bytes, packed data), and the expected fp32 values come from torch's
own dtype conversions. With --check FILE it instead reads a safetensors file (e.g. one fedex wrote)
with strict checks and prints its tensors.

    /usr/bin/python3 tests/make_st_fixtures.py            # regenerates tests/fixtures/st_ref.*
    /usr/bin/python3 tests/make_st_fixtures.py --check F  # reads F as Hugging Face's reader would
"""
import json
import os
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")

DTYPES = {  # safetensors name -> (numpy storage dtype, torch dtype, bytes per element)
    "F64": (np.float64, torch.float64, 8), "F32": (np.float32, torch.float32, 4),
    "F16": (np.uint16, torch.float16, 2), "BF16": (np.uint16, torch.bfloat16, 2),
    "I64": (np.int64, torch.int64, 8), "I32": (np.int32, torch.int32, 4),
    "I16": (np.int16, torch.int16, 2), "I8": (np.int8, torch.int8, 1),
    "U8": (np.uint8, torch.uint8, 1), "BOOL": (np.bool_, torch.bool, 1),
}


def tensors():
    """(name, dtype, shape, raw little-endian storage as a numpy array). Halves are given as bit
    patterns so that every special case is spelled out."""
    f16_bits = [0x0000, 0x8000, 0x3C00, 0xC000, 0x7BFF,  # 0, -0, 1, -2, 65504 (largest)
                0x0400, 0x0001, 0x03FF, 0x8001, 0x0200,  # smallest normal, subnormals (2^-24 ...)
                0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x3555,  # inf, -inf, NaN, -NaN, 0.333...
                0x5A50]                                   # 202
    bf16_bits = [0x0000, 0x8000, 0x3F80, 0xC040, 0x7F7F,  # 0, -0, 1, -3, largest finite
                 0x0080, 0x0001, 0x007F, 0x8001,          # smallest normal, subnormals
                 0x7F80, 0xFF80, 0x7FC0, 0x3EAB, 0x4349]  # inf, -inf, NaN, 0.333..., 201
    rng = np.random.default_rng(20240601)
    return [
        # A 3-byte U8 first, so the F32 after it is not 4-byte aligned (the copying path of fx_st_f32).
        ("u8", "U8", [3], np.array([0, 7, 255], np.uint8)),
        ("f32.unaligned", "F32", [2, 2], np.array([1.5, -0.0, 1e-45, 3.4028235e38], np.float32)),
        ("pad", "I8", [1], np.array([-128], np.int8)),
        ("f16", "F16", [4, 4], np.array(f16_bits, np.uint16)),
        ("bf16", "BF16", [14], np.array(bf16_bits, np.uint16)),
        ("f64", "F64", [7], np.array([1 / 3, -2.5, 1e300, -1e300, 1e-50, 0.1, 16777217.0], np.float64)),
        ("i64", "I64", [5], np.array([-2**63, 2**63 - 1, 2**24 + 1, -5, 0], np.int64)),
        ("i32", "I32", [4], np.array([-2**31, 2**31 - 1, 16777217, 42], np.int32)),
        ("i16", "I16", [3], np.array([-32768, 32767, -1], np.int16)),
        ("i8", "I8", [3], np.array([-128, 127, 0], np.int8)),
        ("bool", "BOOL", [2, 2], np.array([True, False, False, True], np.bool_)),
        ("scalar", "F32", [], np.array([2.75], np.float32)),
        ("empty", "F32", [0, 3], np.zeros(0, np.float32)),
        ("encoder.layer.0.attention.self.query.weight", "F32", [3, 4],
         rng.standard_normal(12).astype(np.float32)),
    ]


def as_f32(dtype, raw):
    """The fp32 values torch makes of each stored element: the reference fedex's reader must match."""
    _, tdt, _ = DTYPES[dtype]
    if dtype in ("F16", "BF16"):  # stored as uint16 bit patterns, which torch cannot wrap: go via int16
        t = torch.from_numpy(raw.astype(np.uint16).view(np.int16).copy()).view(tdt)
    else:
        t = torch.from_numpy(raw.copy())
    return t.to(torch.float32).numpy()


def write(path, items, metadata):
    header, data, off = {}, b"", 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in items:
        b = raw.astype(raw.dtype.newbyteorder("<")).tobytes()
        assert len(b) == int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][2]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
        data += b
        off += len(b)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def check(path):
    """Reads PATH with the checks Hugging Face's reader makes; prints one line per tensor."""
    buf = open(path, "rb").read()
    (n,) = struct.unpack("<Q", buf[:8])
    assert 8 + n <= len(buf), "header runs past the file"
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    data = buf[8 + n:]
    pos = 0
    for name, e in sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        b, end = e["data_offsets"]
        npdt, _, size = DTYPES[e["dtype"]]
        assert b == pos and end - b == int(np.prod(e["shape"], dtype=np.int64)) * size, name
        arr = np.frombuffer(data[b:end], dtype=np.dtype(npdt).newbyteorder("<"))
        print(name, e["dtype"], e["shape"], end - b, as_f32(e["dtype"], arr)[:4])
        pos = end
    assert pos == len(data), "data area not fully covered"
    print("ok:", len(header), "tensors,", len(meta), "metadata entries")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
        return
    os.makedirs(OUT, exist_ok=True)
    items = tensors()
    meta = {"format": "pt", "note": "fixture \"quoted\" caf\u00e9"}
    write(os.path.join(OUT, "st_ref.safetensors"), items, meta)

    # Expected fp32 values as bit patterns, one tensor a line: NAME COUNT HEX...
    with open(os.path.join(OUT, "st_ref_expect.txt"), "w") as f:
        f.write("# tensor, element count, fp32 bit patterns torch gives (tests/make_st_fixtures.py)\n")
        for name, dtype, shape, raw in items:
            v = as_f32(dtype, raw).astype(np.float32).view(np.uint32)
            f.write(" ".join([name, str(v.size)] + ["%08x" % x for x in v]) + "\n")

    # What `fedex inspect` prints, as whitespace-separated words: one line per tensor, then totals and
    # metadata. The test compares words, so column widths are free.
    with open(os.path.join(OUT, "st_ref_inspect.txt"), "w") as f:
        f.write("tensor dtype shape bytes\n")
        params = nbytes = 0
        for name, dtype, shape, raw in items:
            b = raw.size * DTYPES[dtype][2]
            f.write("%s %s [%s] %d\n" % (name, dtype, ", ".join(map(str, shape)), b))
            params += raw.size
            nbytes += b
        f.write("%d tensors, %d parameters, %d bytes\n" % (len(items), params, nbytes))
        for k, v in meta.items():
            f.write("metadata %s = %s\n" % (k, v))


if __name__ == "__main__":
    main()
