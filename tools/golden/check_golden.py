#!/usr/bin/env python3
"""Parse and sanity-check fixtures/golden/*.bin (format EAGV v1, see README.md).

Usage: python3 tools/golden/check_golden.py [fixtures/golden]
Checks: header fields, exact file length, and that dequantized values are finite wherever the
input row was finite (F16/BF16 excepted: they carry inf/NaN inputs on purpose). Standard library only.
"""
import math
import os
import struct
import sys

HEADER = struct.Struct("<4sI16sIIIIIIII")  # 56 bytes


def parse(path):
    data = open(path, "rb").read()
    (magic, version, name, ggml_type, n_rows, n_per_row, has_im, blck, tsize, row_size,
     flags) = HEADER.unpack_from(data, 0)
    if magic != b"EAGV" or version != 1:
        raise ValueError(f"{path}: bad magic/version {magic!r} {version}")
    name = name.rstrip(b"\0").decode()
    n = n_rows * n_per_row
    off = HEADER.size
    imatrix = None
    if has_im:
        imatrix = struct.unpack_from(f"<{n_per_row}f", data, off)
        off += 4 * n_per_row
    inp = struct.unpack_from(f"<{n}f", data, off)
    off += 4 * n
    quant = data[off:off + n_rows * row_size]
    off += n_rows * row_size
    deq = struct.unpack_from(f"<{n}f", data, off)
    off += 4 * n
    if off != len(data):
        raise ValueError(f"{path}: length {len(data)} != expected {off}")
    if row_size != n_per_row // blck * tsize:
        raise ValueError(f"{path}: row_size {row_size} != n_per_row/block*type_size")
    return dict(name=name, ggml_type=ggml_type, n_rows=n_rows, n_per_row=n_per_row,
                imatrix=imatrix, input=inp, quant=quant, dequant=deq, flags=flags,
                block_size=blck, type_size=tsize, row_size=row_size)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "fixtures/golden"
    files = sorted(f for f in os.listdir(d) if f.endswith(".bin"))
    if not files:
        sys.exit(f"no .bin files in {d}")
    bad = 0
    for f in files:
        g = parse(os.path.join(d, f))
        nonfinite = sum(1 for v in g["dequant"] if not math.isfinite(v))
        if g["name"] not in ("F16", "BF16") and nonfinite:
            print(f"{f}: {nonfinite} non-finite dequantized values")
            bad += 1
        print(f"{f:22s} type={g['name']:6s} id={g['ggml_type']:2d} rows={g['n_rows']:2d} "
              f"n_per_row={g['n_per_row']:4d} imatrix={'yes' if g['imatrix'] else 'no ':3s} "
              f"block={g['block_size']:3d} bytes/block={g['type_size']:3d} flags={g['flags']} "
              f"non-finite dequant={nonfinite}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
