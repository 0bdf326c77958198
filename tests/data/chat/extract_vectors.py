#!/usr/bin/env python3
"""Regenerates the test-vector files in this folder from the normative spec
(../shared/spec/chat-encoding.md, §7 and Appendix A). Run from the repository root:
    python3 tests/data/chat/extract_vectors.py [path/to/chat-encoding.md]
Writes spec_vectors.json (E*, P*, X*), g1_input.json and g1_output.txt."""
import json, re, sys, os, hashlib
from collections import OrderedDict

spec = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../../../../shared/spec/chat-encoding.md")
text = open(spec, encoding="utf-8").read()
out_dir = os.path.dirname(os.path.abspath(__file__))

def blocks(s):
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)\n```", s, re.S)]

vectors = OrderedDict()
sections = re.split(r"\n(?=\*\*[EPX]\d+[a-z]?\.\*\*)", text[text.index("### 7.2"):text.index("## 8.")])
for sec in sections[1:]:
    vid = re.match(r"\*\*([EPX]\d+[a-z]?)\.\*\*", sec).group(1)
    head = sec.split("\n", 1)[0]
    v = OrderedDict(id=vid)
    m = re.search(r'thinking_mode = "(\w+)"', head)
    if m: v["thinking"] = m.group(1) == "thinking"
    m = re.search(r"`thinking = (true|false)`", head)
    if m: v["thinking"] = m.group(1) == "true"
    m = re.search(r"`add_generation_prompt = (true|false)`", head)
    if m: v["add_generation_prompt"] = m.group(1) == "true"
    parts = re.split(r"\n(?=Messages:|Expected|Generated text:|Reference result|V3\.1 first revision|Engine policy)", sec)
    for p in parts:
        bl = blocks(p)
        if p.startswith("Messages:"):
            v["messages"] = json.loads(bl[0][1], object_pairs_hook=OrderedDict)
        elif p.startswith("Expected"):
            v["expected"] = json.loads(bl[0][1])
        elif p.startswith("V3.1 first revision"):
            v["expected_v31_first"] = json.loads(bl[0][1])
        elif p.startswith("Generated text:"):
            v["text"] = json.loads(bl[0][1])
        elif p.startswith("Reference result"):
            m = re.match(r'Reference result: error \("([^"]*)"\)', p)
            if m: v["error"] = m.group(1)
            else: v["result"] = json.loads(bl[0][1], object_pairs_hook=OrderedDict)
    vectors[vid] = v

with open(os.path.join(out_dir, "spec_vectors.json"), "w", encoding="utf-8") as f:
    json.dump(vectors, f, ensure_ascii=False, indent=1)
    f.write("\n")

a = text[text.index("### A.1"):]
bl = blocks(a)
with open(os.path.join(out_dir, "g1_input.json"), "w", encoding="utf-8") as f:
    f.write(bl[0][1] + "\n")
with open(os.path.join(out_dir, "g1_output.txt"), "w", encoding="utf-8") as f:
    f.write(bl[1][1] + "\n")   # like the official file: one final newline, not part of the prompt
print(len(vectors), "vectors;", len(bl[1][1]), "chars in G1 output; sha256",
      hashlib.sha256(bl[1][1].encode()).hexdigest())
