// Load generator for dsa serve on the official `openai` client: closed-loop clients at each
// concurrency level, streaming completions, reporting requests/s, output tokens/s, TTFT and TPOT
// (p50/p99). Prompts are distinct (no prefix-cache hits between requests) unless --shared-prefix.
//
//   node load.mjs --url http://127.0.0.1:8000 [--concurrency 1,8,32,128] [--requests 4] (per client)
//                 [--prompt-words 64] [--max-tokens 64] [--shared-prefix 0] [--json out.json]
import OpenAI from "openai";

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith("--") ? all[i + 1] : "1"]);
  return acc;
}, []));
const url = args.url || "http://127.0.0.1:8000";
const levels = (args.concurrency || "1,8,32,128").split(",").map(Number);
const perClient = Number(args.requests || 4);
const promptWords = Number(args["prompt-words"] || 64);
const maxTokens = Number(args["max-tokens"] || 64);
const sharedPrefix = Number(args["shared-prefix"] || 0);
const client = new OpenAI({ baseURL: url + "/v1", apiKey: process.env.DSA_API_KEY || "none", maxRetries: 0, timeout: 600000 });

const words = ["the", "river", "stone", "north", "winter", "green", "house", "light", "quiet", "market", "letter", "garden"];
let seq = 0;
function prompt() {
  let x = ++seq * 2654435761 % 4294967296;
  const out = [];
  for (let i = 0; i < promptWords; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    out.push(i < sharedPrefix ? words[i % words.length] : words[x % words.length]);
  }
  return out.join(" ");
}

const pct = (v, p) => {
  if (!v.length) return NaN;
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
};

async function one(stats) {
  const t0 = performance.now();
  let first = 0, last = 0, usage = null;
  const s = await client.completions.create({
    model: undefined, prompt: prompt(), max_tokens: maxTokens, temperature: 0.8, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
  });
  for await (const c of s) {
    if (c.usage) usage = c.usage;
    if (c.choices.length && c.choices[0].text) {
      last = performance.now();
      if (!first) first = last;
    }
  }
  const n = usage ? usage.completion_tokens : 0;
  stats.tokens += n;
  stats.ttft.push((first - t0) / 1000);
  if (n > 1) stats.tpot.push((last - first) / 1000 / (n - 1));
}

const results = [];
for (const c of levels) {
  const stats = { tokens: 0, ttft: [], tpot: [] };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: c }, async () => { for (let i = 0; i < perClient; i++) await one(stats); }));
  const secs = (performance.now() - t0) / 1000;
  const r = {
    concurrency: c, requests: c * perClient, seconds: secs, requests_per_s: c * perClient / secs, output_tokens_per_s: stats.tokens / secs,
    ttft_p50_s: pct(stats.ttft, 0.5), ttft_p99_s: pct(stats.ttft, 0.99), tpot_p50_s: pct(stats.tpot, 0.5), tpot_p99_s: pct(stats.tpot, 0.99),
  };
  results.push(r);
  console.log(`concurrency ${String(c).padStart(4)}: ${r.requests_per_s.toFixed(2)} req/s, ${r.output_tokens_per_s.toFixed(1)} output tok/s, ` +
              `TTFT p50 ${(r.ttft_p50_s * 1000).toFixed(0)} ms p99 ${(r.ttft_p99_s * 1000).toFixed(0)} ms, ` +
              `TPOT p50 ${(r.tpot_p50_s * 1000).toFixed(1)} ms p99 ${(r.tpot_p99_s * 1000).toFixed(1)} ms`);
}
if (args.json) (await import("node:fs")).writeFileSync(args.json, JSON.stringify({ url, promptWords, maxTokens, results }, null, 2));
