#!/usr/bin/env python3
"""Move a trained indexer between checkpoints without moving the model (stdlib only).

  indexer_overlay.py extract CKPT_DIR OUT.safetensors    the `.indexer.` tensors of CKPT_DIR, as they are stored
  indexer_overlay.py apply BASE_DIR IN.safetensors OUT_DIR
                                                         BASE_DIR copied to OUT_DIR with those tensors' bytes
                                                         replaced in place (same names, dtypes and shapes, or an
                                                         error); every other byte is BASE_DIR's

Used to carry a checkpoint trained by `dsa train-indexer` (dsa-mini: 6.9 MB of indexer out of 48 MB) to and from
the device machine, whose file transfers are small.
"""
import json
import os
import shutil
import struct
import sys


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def weight_map(ckpt):
    idx = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            return json.load(f)["weight_map"]
    single = os.path.join(ckpt, "model.safetensors")
    hdr, _ = read_header(single)
    return {k: "model.safetensors" for k in hdr if k != "__metadata__"}


def extract(ckpt, out):
    names = sorted(n for n in weight_map(ckpt) if ".indexer." in n)
    if not names:
        sys.exit(f"error: {ckpt} has no .indexer. tensors")
    wm = weight_map(ckpt)
    header, blobs, off = {}, [], 0
    for n in names:
        hdr, base = read_header(os.path.join(ckpt, wm[n]))
        m = hdr[n]
        a, b = m["data_offsets"]
        with open(os.path.join(ckpt, wm[n]), "rb") as f:
            f.seek(base + a)
            data = f.read(b - a)
        header[n] = {"dtype": m["dtype"], "shape": m["shape"], "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    print(f"{out}: {len(names)} indexer tensors, {off} bytes")


def apply(base, overlay, out):
    if os.path.exists(out):
        sys.exit(f"error: {out} exists")
    shutil.copytree(base, out)
    wm = weight_map(out)
    ohdr, obase = read_header(overlay)
    with open(overlay, "rb") as src:
        for n, m in ohdr.items():
            if n == "__metadata__":
                continue
            if n not in wm:
                sys.exit(f"error: {overlay}: tensor {n} is not in {base}")
            shard = os.path.join(out, wm[n])
            hdr, base_off = read_header(shard)
            t = hdr[n]
            if t["dtype"] != m["dtype"] or t["shape"] != m["shape"]:
                sys.exit(f"error: {n}: {m['dtype']}{m['shape']} in {overlay}, {t['dtype']}{t['shape']} in {base}")
            a, b = m["data_offsets"]
            src.seek(obase + a)
            data = src.read(b - a)
            ta, tb = t["data_offsets"]
            assert tb - ta == len(data)
            with open(shard, "r+b") as f:
                f.seek(base_off + ta)
                f.write(data)
    print(f"{out}: {base} with {len(ohdr) - ('__metadata__' in ohdr)} indexer tensors from {overlay}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "apply":
        apply(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
