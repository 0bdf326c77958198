#!/usr/bin/env python3
"""Give a random model made by `dsa make-model` (no tokenizer) a tokenizer that covers its whole vocabulary.

  scripts/widen_tokenizer.py SRC_MODEL_DIR DST_MODEL_DIR

Copies SRC's tokenizer.json / tokenizer_config.json into DST and appends a distinct made-up token (a space
and a few letters and digits) for every id from SRC's vocabulary up to DST's config.json vocab_size. Only
for benchmarks of dsa serve on the real-scale preset (gpu_check stage serve): its 129280-wide head with a
random model emits ids all over that range, and with dsa-mini's 8192-id tokenizer most would decode to
nothing, so the server would stream (and detokenize) almost no text. The added ids are never produced by
encoding (they have no merges); decoding any id now gives a few bytes, as a real tokenizer's would.
"""
import json
import os
import shutil
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    with open(os.path.join(dst, "config.json")) as f:
        vocab_size = int(json.load(f)["vocab_size"])
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    used = set(vocab.values()) | {a["id"] for a in tok.get("added_tokens", [])}
    top = max(used)
    if top >= vocab_size:
        sys.exit(f"widen_tokenizer: {src}'s tokenizer has ids up to {top}, more than {dst}'s vocab_size {vocab_size}")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    added = 0
    for i in range(top + 1, vocab_size):
        n, s = i, ""
        while True:
            n, r = divmod(n, 36)
            s = digits[r] + s
            if n == 0:
                break
        name = "\u0120q" + s  # ByteLevel: U+0120 is the space byte
        while name in vocab:
            name += "_"
        vocab[name] = i
        added += 1
    tmp = os.path.join(dst, ".tokenizer.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    os.replace(tmp, os.path.join(dst, "tokenizer.json"))
    cfg = os.path.join(src, "tokenizer_config.json")
    if os.path.exists(cfg):
        shutil.copyfile(cfg, os.path.join(dst, "tokenizer_config.json"))
    print(f"widen_tokenizer: {dst}/tokenizer.json: {src}'s ids 0..{top} + {added} made-up tokens = {vocab_size} ids")


if __name__ == "__main__":
    main()
