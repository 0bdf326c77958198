// The chat page of dsa serve (GET /) in headless Chromium (run by tests/test_server_e2e.cpp):
// load it, send a message and watch the streamed text arrive piece by piece (the same text the API
// gives), see thinking shown apart, stop a long generation and check the server cancelled it, and
// read the speed of the last answer.
//
//   node chat_page.mjs   with DSA_URL (a server without API key) and CHROMIUM (the browser binary).
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const url = process.env.DSA_URL;
const exe = process.env.CHROMIUM || "/usr/bin/chromium";
assert.ok(url, "DSA_URL must be set");

async function metric(name) {
  const text = await (await fetch(url + "/metrics")).text();
  const m = text.match(new RegExp("^" + name.replace(/[{}"]/g, "\\$&") + " (\\S+)$", "m"));
  return m ? Number(m[1]) : NaN;
}

const browser = await chromium.launch({ executablePath: exe, headless: true, args: ["--no-sandbox"] });
let failed = false;
try {
  const page = await browser.newPage();
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  // Self-contained: every request the page makes goes to the server itself.
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) foreign.push(r.url()); });
  await page.goto(url + "/");
  await page.waitForFunction(() => document.getElementById("model").textContent.includes("dsa-mini"), null, { timeout: 10000 });

  // 1. A message; record the answer's length at every DOM change to see it stream.
  await page.fill("#max_tokens", "200");  // long enough to be seen arriving even on a loaded machine
  await page.fill("#temperature", "0");
  await page.evaluate(() => {
    window.__lengths = [];
    new MutationObserver(() => {
      const all = document.querySelectorAll(".msg.assistant .content");
      if (all.length) window.__lengths.push(all[all.length - 1].textContent.length);
    }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
  });
  await page.fill("#input", "Tell me about the President.");
  await page.click("#send");
  await page.waitForSelector('.msg.assistant[data-state="done"]', { timeout: 60000 });
  const answer = await page.textContent(".msg.assistant .content");
  const lengths = await page.evaluate(() => window.__lengths);
  const distinct = new Set(lengths.filter((n) => n > 0));
  assert.ok(distinct.size >= 3, "the text arrived in pieces, not at once: " + JSON.stringify(lengths));
  const api = await (await fetch(url + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: "dsa-mini", messages: [{ role: "user", content: "Tell me about the President." }],
                           max_tokens: 200, temperature: 0, chat_template_kwargs: { thinking: false } }),
  })).json();
  assert.equal(answer, api.choices[0].message.content, "the page shows what the API answers");
  const speed = await page.textContent("#speed");
  assert.match(speed, /last answer: [0-9.]+ tok\/s/);
  const meta = await page.textContent(".msg.assistant .meta");
  assert.match(meta, new RegExp("^(stop|length) · " + api.usage.completion_tokens + " tokens"));
  console.log("ok   streamed answer (" + distinct.size + " steps), " + speed.trim());

  // 2. Thinking on: the reasoning goes into its own block, apart from the answer.
  await page.click("#clear");
  await page.check("#thinking");
  await page.fill("#max_tokens", "16");
  await page.fill("#input", "Why is the sky blue?");
  await page.click("#send");
  await page.waitForSelector('.msg.assistant[data-state="done"]', { timeout: 60000 });
  const thinkingShown = await page.$eval(".msg.assistant .thinking", (d) => !d.hidden && d.textContent.length > "thinking".length);
  assert.ok(thinkingShown, "reasoning shown in the thinking block");
  const thinkText = await page.$eval(".msg.assistant .thinking div", (d) => d.textContent);
  const contentText = await page.textContent(".msg.assistant .content");
  assert.ok(!contentText.includes(thinkText) || thinkText.length === 0, "reasoning kept out of the answer");
  console.log("ok   thinking shown apart (" + thinkText.length + " chars)");
  await page.uncheck("#thinking");

  // 3. Stop: a long answer, stopped after some text arrived; the server cancels it.
  await page.click("#clear");
  const cancelled0 = await metric('dsa:request_success_total{finished_reason="cancelled"}');
  // Greedy: this prompt runs past 1500 tokens without an end (checked), so only the stop ends it.
  await page.fill("#max_tokens", "4000");
  await page.fill("#temperature", "0");
  await page.fill("#input", "Tell me a long story about the sea.");
  await page.click("#send");
  await page.waitForFunction(() => {
    const c = document.querySelector(".msg.assistant .content");
    return c && c.textContent.length > 20;
  }, null, { timeout: 60000 });
  assert.equal(await page.isEnabled("#stop"), true);
  await page.click("#stop");
  await page.waitForSelector('.msg.assistant[data-state="stopped"]', { timeout: 10000 });
  assert.match(await page.textContent(".msg.assistant .meta"), /^stopped/);
  assert.equal(await page.isEnabled("#send"), true);
  let ok = false;
  for (let i = 0; i < 250 && !ok; i++) {
    ok = (await metric('dsa:request_success_total{finished_reason="cancelled"}')) > cancelled0 &&
         (await metric("dsa:num_requests_running")) === 0 && (await metric("dsa:kv_cache_blocks_used")) === 0;
    if (!ok) await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(ok, "the server cancelled the stopped request and freed its blocks");
  console.log("ok   stop cancels the request on the server");

  assert.deepEqual(foreign, [], "requests to other origins");
  assert.deepEqual(consoleErrors, [], "page errors");
} catch (e) {
  failed = true;
  console.log("FAIL " + (e && e.stack ? e.stack : e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
