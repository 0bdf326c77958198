#!/usr/bin/env bash
# The main job: install what is needed, build in Release, create the default model, generate
# from it (and from dsa-mini, the small real model, when ../shared is there), and compare DSA
# decode with dense MLA at a context several times index_topk.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/deps.sh
bash scripts/build.sh
DSA=./build/dsa
MINI=../shared/models/dsa-mini
MODEL=build/models/default
TOK_FROM=()
[ -f "$MINI/tokenizer.json" ] && TOK_FROM=(--tokenizer-from "$MINI")
echo; echo "== 1. the default model (random weights, exact DeepSeek-V3.2 checkpoint format)"
[ -f "$MODEL/config.json" ] || $DSA make-model --preset default --out "$MODEL" "${TOK_FROM[@]}"
echo; echo "== 2. generation from the default model (random weights: the text is noise; the path is real)"
$DSA generate -m "$MODEL" --prompt-ids "0 415 2213 30 977" -n 16 --ignore-eos
if [ -d "$MINI" ]; then
  echo; echo "== 3. generation from dsa-mini (a small trained model in the same format)"
  $DSA generate -m "$MINI" -p "The President of the United States" -n 48 --temperature 0.7 --top-p 0.95 --seed 1
fi
echo; echo "== 4. DSA vs dense MLA decode at 16 x index_topk (same cache state, same model)"
$DSA bench -m "$MODEL" --ctx 4096 --steps 8
