// dsa serve through the official `openai` npm client (run by tests/test_server_e2e.cpp, which
// starts the servers): chat and completions, streaming and not, n > 1, logprobs, reasoning on/off,
// tool calls (V3.2 DSML and V3.1 through scripted replies), usage, and every error shape.
//
//   node openai_client.mjs   with DSA_URL (dsa-mini, API key DSA_KEY), DSA_URL_V32 (the same model
//   with the V3.2 chat format) and DSA_URL_TIGHT (one slot, a queue of one) in the environment.
// Exits non-zero on the first failed check, naming it.
import assert from "node:assert/strict";
import OpenAI from "openai";

const url = process.env.DSA_URL, urlV32 = process.env.DSA_URL_V32, urlTight = process.env.DSA_URL_TIGHT;
const key = process.env.DSA_KEY;
assert.ok(url && urlV32 && urlTight && key, "DSA_URL, DSA_URL_V32, DSA_URL_TIGHT and DSA_KEY must be set");

// No retries: a 429 or 503 must reach the test, not be retried away.
const client = new OpenAI({ baseURL: url + "/v1", apiKey: key, maxRetries: 0, timeout: 120000 });
const v32 = new OpenAI({ baseURL: urlV32 + "/v1", apiKey: "unused", maxRetries: 0, timeout: 120000 });
const tight = new OpenAI({ baseURL: urlTight + "/v1", apiKey: "unused", maxRetries: 0, timeout: 120000 });

let checks = 0;
async function check(name, fn) {
  try {
    await fn();
    checks++;
    console.log("ok   " + name);
  } catch (e) {
    console.log("FAIL " + name);
    console.log(e && e.stack ? e.stack : e);
    process.exit(1);
  }
}

const user = (text) => [{ role: "user", content: text }];
const tools = [{
  type: "function",
  function: {
    name: "get_weather", description: "Current weather of a city",
    parameters: { type: "object", properties: { city: { type: "string" }, days: { type: "integer" } }, required: ["city"] },
  },
}];

function checkUsage(u, completionTokens) {
  assert.ok(u, "usage present");
  assert.ok(u.prompt_tokens > 0);
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  if (completionTokens !== undefined) assert.equal(u.completion_tokens, completionTokens);
  assert.equal(typeof u.prompt_tokens_details.cached_tokens, "number");
}

async function collectChat(stream) {
  const out = { content: [], reasoning: [], finish: [], usage: null, chunks: 0 };
  for await (const chunk of stream) {
    out.chunks++;
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.usage) out.usage = chunk.usage;
    for (const c of chunk.choices) {
      out.content[c.index] = (out.content[c.index] || "") + (c.delta.content || "");
      out.reasoning[c.index] = (out.reasoning[c.index] || "") + (c.delta.reasoning_content || "");
      if (c.finish_reason) out.finish[c.index] = c.finish_reason;
    }
  }
  return out;
}

// The error reaches the client as OpenAI's error object: message, type, param, code.
async function expectError(promise, status, { param, messageHas, code } = {}) {
  let err = null;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, "expected an error " + status);
  assert.ok(err instanceof OpenAI.APIError, "an APIError, got " + err);
  assert.equal(err.status, status, err.message);
  assert.equal(typeof err.error.message, "string");
  assert.ok(err.error.message.length > 0);
  assert.equal(typeof err.error.type, "string");
  assert.ok("param" in err.error && "code" in err.error, JSON.stringify(err.error));
  if (param !== undefined) assert.equal(err.param, param, JSON.stringify(err.error));
  if (code !== undefined) assert.equal(err.code, code, JSON.stringify(err.error));
  if (messageHas) assert.ok(err.error.message.includes(messageHas), err.error.message + " lacks " + messageHas);
  return err;
}

// Raw requests for what the client cannot send (bad JSON, bad bytes, huge headers).
async function raw(path, body, headers = {}) {
  const r = await fetch(url + path, {
    method: "POST", body,
    headers: { "Content-Type": "application/json", Authorization: "Bearer " + key, ...headers },
  });
  const text = await r.text();
  let j = null;
  try { j = JSON.parse(text); } catch (e) {}
  return { status: r.status, body: j, text };
}
function checkShape(r, status, messageHas) {
  assert.equal(r.status, status, r.text);
  assert.ok(r.body && r.body.error, r.text);
  for (const k of ["message", "type", "param", "code"]) assert.ok(k in r.body.error, k + " in " + r.text);
  if (messageHas) assert.ok(r.body.error.message.includes(messageHas), r.text);
}

await check("models.list", async () => {
  const list = await client.models.list();
  const ids = [];
  for await (const m of list) ids.push(m.id);
  assert.deepEqual(ids, ["dsa-mini"]);
  const one = await client.models.retrieve("dsa-mini");
  assert.equal(one.id, "dsa-mini");
});

let greedyText = null;
await check("chat, not streamed", async () => {
  const r = await client.chat.completions.create({
    model: "dsa-mini", messages: user("Tell me about the President."), max_tokens: 16, temperature: 0,
  });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(typeof r.choices[0].message.content, "string");
  assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
  checkUsage(r.usage);
  assert.ok(r.usage.completion_tokens <= 16);
  greedyText = r.choices[0].message.content;
});

await check("chat, streamed: the same text, usage last", async () => {
  const s = await client.chat.completions.create({
    model: "dsa-mini", messages: user("Tell me about the President."), max_tokens: 16, temperature: 0,
    stream: true, stream_options: { include_usage: true },
  });
  const got = await collectChat(s);
  assert.equal(got.content[0], greedyText);
  assert.ok(got.chunks > 3, "streamed in pieces");
  checkUsage(got.usage);
});

await check("chat stream helper (finalChatCompletion)", async () => {
  const s = client.chat.completions.stream({
    model: "dsa-mini", messages: user("Tell me about the President."), max_tokens: 16, temperature: 0,
  });
  const final = await s.finalChatCompletion();
  assert.equal(final.choices[0].message.content, greedyText);
});

await check("completions, streamed and not, echo and logprobs", async () => {
  const a = await client.completions.create({ model: "dsa-mini", prompt: "The President of the United States", max_tokens: 10, temperature: 0 });
  assert.equal(a.object, "text_completion");
  checkUsage(a.usage);
  const s = await client.completions.create({
    model: "dsa-mini", prompt: "The President of the United States", max_tokens: 10, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = "", usage = null;
  for await (const c of s) {
    if (c.usage) usage = c.usage;
    for (const ch of c.choices) text += ch.text;
  }
  assert.equal(text, a.choices[0].text);
  checkUsage(usage, a.usage.completion_tokens);
  const e = await client.completions.create({
    model: "dsa-mini", prompt: "The President", max_tokens: 3, temperature: 0, echo: true, logprobs: 2,
  });
  assert.ok(e.choices[0].text.startsWith("The President"));
  const lp = e.choices[0].logprobs;
  assert.equal(lp.tokens.length, lp.token_logprobs.length);
  assert.equal(lp.token_logprobs[0], null);
  assert.ok(lp.token_logprobs.slice(1).every((x) => typeof x === "number" && x <= 0));
  // Token ids as the prompt.
  const ids = await client.completions.create({ model: "dsa-mini", prompt: [0, 750, 7054], max_tokens: 4, temperature: 0 });
  assert.equal(ids.usage.prompt_tokens, 3);
});

await check("n > 1 with a seed: n different samples, reproducible", async () => {
  const req = { model: "dsa-mini", messages: user("Write about the sea."), max_tokens: 12, temperature: 1.0, n: 3, seed: 42 };
  const a = await client.chat.completions.create(req);
  const b = await client.chat.completions.create(req);
  assert.equal(a.choices.length, 3);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1, 2]);
  assert.deepEqual(a.choices.map((c) => c.message.content), b.choices.map((c) => c.message.content));
  assert.ok(new Set(a.choices.map((c) => c.message.content)).size >= 2, "samples differ");
  const s = await collectChat(await client.chat.completions.create({ ...req, stream: true }));
  assert.deepEqual(s.content, a.choices.map((c) => c.message.content));
});

await check("chat logprobs", async () => {
  const r = await client.chat.completions.create({
    model: "dsa-mini", messages: user("Hello"), max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 3,
  });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, r.usage.completion_tokens);
  for (const t of lp) {
    assert.equal(t.top_logprobs.length, 3);
    assert.ok(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5);
    assert.ok(Array.isArray(t.bytes));
  }
  assert.equal(lp.map((t) => t.token).join(""), r.choices[0].message.content);
});

await check("reasoning on and off", async () => {
  const on = await client.chat.completions.create({
    model: "dsa-mini", messages: user("Why is the sky blue?"), max_tokens: 10, temperature: 0,
    chat_template_kwargs: { thinking: true },
  });
  assert.equal(typeof on.choices[0].message.reasoning_content, "string");
  const off = await client.chat.completions.create({ model: "dsa-mini", messages: user("Why is the sky blue?"), max_tokens: 10, temperature: 0 });
  assert.equal(off.choices[0].message.reasoning_content ?? null, null);
  const scripted = { model: "dsa-mini", messages: user("Why?"), max_tokens: 100, chat_template_kwargs: { thinking: true },
                     scripted_reply: "Short thought.</think>The answer." };
  const r = await client.chat.completions.create(scripted);
  assert.equal(r.choices[0].message.reasoning_content, "Short thought.");
  assert.equal(r.choices[0].message.content, "The answer.");
  const s = await collectChat(await client.chat.completions.create({ ...scripted, stream: true }));
  assert.equal(s.reasoning[0], "Short thought.");
  assert.equal(s.content[0], "The answer.");
});

const dsml = "I will check.\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n" +
  "<｜DSML｜parameter name=\"city\" string=\"true\">Lisbon</｜DSML｜parameter>\n" +
  "<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";

await check("tool calls: V3.2 DSML, not streamed", async () => {
  const r = await v32.chat.completions.create({
    model: "dsa-mini", messages: user("Weather in Lisbon?"), tools, max_tokens: 300, scripted_reply: dsml,
  });
  const m = r.choices[0].message;
  assert.equal(r.choices[0].finish_reason, "tool_calls");
  assert.equal(m.content, "I will check.");
  assert.equal(m.tool_calls.length, 1);
  assert.equal(m.tool_calls[0].type, "function");
  assert.match(m.tool_calls[0].id, /^call_[0-9a-f]{24}$/);
  assert.equal(m.tool_calls[0].function.name, "get_weather");
  assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), { city: "Lisbon", days: 2 });
});

await check("tool calls: V3.2 DSML, streamed as deltas (client accumulator)", async () => {
  const s = v32.chat.completions.stream({
    model: "dsa-mini", messages: user("Weather in Lisbon?"), tools, max_tokens: 300, scripted_reply: dsml,
  });
  let argDeltas = 0;
  s.on("tool_calls.function.arguments.delta", () => argDeltas++);
  const final = await s.finalChatCompletion();
  const m = final.choices[0].message;
  assert.equal(final.choices[0].finish_reason, "tool_calls");
  assert.equal(m.tool_calls[0].function.name, "get_weather");
  assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), { city: "Lisbon", days: 2 });
  assert.ok(argDeltas >= 2, "arguments arrived in pieces: " + argDeltas);
});

await check("tool result round trip and forced tool_choice", async () => {
  // The tool's answer goes back in; the prompt renders it (more prompt tokens than without).
  const history = [
    ...user("Weather in Lisbon?"),
    { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: "{\"city\": \"Lisbon\"}" } }] },
    { role: "tool", tool_call_id: "call_1", content: "{\"temp_c\": 21}" },
  ];
  const r = await v32.chat.completions.create({ model: "dsa-mini", messages: history, tools, max_tokens: 4, temperature: 0 });
  assert.ok(r.usage.prompt_tokens > 20);
  const forced = await v32.chat.completions.create({
    model: "dsa-mini", messages: user("Weather?"), tools, max_tokens: 300,
    tool_choice: { type: "function", function: { name: "get_weather" } },
    scripted_reply: "<｜DSML｜parameter name=\"city\" string=\"true\">Bergen</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
  });
  assert.equal(forced.choices[0].message.tool_calls[0].function.name, "get_weather");
  assert.deepEqual(JSON.parse(forced.choices[0].message.tool_calls[0].function.arguments), { city: "Bergen" });
});

await check("tool calls: V3.1 format", async () => {
  const r = await client.chat.completions.create({
    model: "dsa-mini", messages: user("Weather in Rome?"), tools, max_tokens: 300,
    scripted_reply: "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Rome\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
  });
  assert.equal(r.choices[0].finish_reason, "tool_calls");
  assert.deepEqual(JSON.parse(r.choices[0].message.tool_calls[0].function.arguments), { city: "Rome" });
});

await check("errors: authentication", async () => {
  const bad = new OpenAI({ baseURL: url + "/v1", apiKey: "wrong", maxRetries: 0 });
  const e = await expectError(bad.chat.completions.create({ model: "dsa-mini", messages: user("hi"), max_tokens: 2 }), 401);
  assert.ok(e instanceof OpenAI.AuthenticationError);
});

await check("errors: wrong types, ranges, unknown model, messages, context, n, tool_choice", async () => {
  const base = { model: "dsa-mini", messages: user("hi"), max_tokens: 4 };
  const c = client.chat.completions;
  assert.ok((await expectError(c.create({ ...base, model: "gpt-4o" }), 404, { param: "model", code: "model_not_found" })) instanceof OpenAI.NotFoundError);
  assert.ok((await expectError(c.create({ ...base, temperature: "hot" }), 400, { param: "temperature" })) instanceof OpenAI.BadRequestError);
  await expectError(c.create({ ...base, top_p: 7 }), 400, { param: "top_p" });
  await expectError(c.create({ ...base, messages: [] }), 400, { param: "messages", messageHas: "empty" });
  await expectError(c.create({ ...base, messages: "hello" }), 400, { param: "messages" });
  await expectError(c.create({ ...base, messages: [{ role: "wizard", content: "x" }] }), 400, { param: "messages[0].role" });
  await expectError(c.create({ ...base, messages: user("word ".repeat(9000)) }), 400,
                    { param: "messages", code: "context_length_exceeded" });
  await expectError(c.create({ ...base, max_tokens: 0 }), 400, { param: "max_tokens" });
  await expectError(c.create({ ...base, max_tokens: -1 }), 400, { param: "max_tokens" });
  await expectError(c.create({ ...base, max_tokens: 1e9 }), 400, { param: "max_tokens", code: "context_length_exceeded" });
  await expectError(c.create({ ...base, n: 1000 }), 400, { param: "n" });
  await expectError(c.create({ ...base, tools, tool_choice: "sometimes" }), 400, { param: "tool_choice" });
  await expectError(c.create({ ...base, tools, tool_choice: { type: "function", function: { name: "nope" } } }), 400, { param: "tool_choice" });
  await expectError(c.create({ ...base, stream_options: { include_usage: true } }), 400, { param: "stream_options" });
  await expectError(client.completions.create({ model: "dsa-mini", prompt: [1, 99999], max_tokens: 2 }), 400, { param: "prompt" });
  await expectError(client.completions.create({ model: "dsa-mini", prompt: "x", max_tokens: 2, logprobs: 50 }), 400, { param: "logprobs" });
});

await check("errors: malformed JSON, invalid UTF-8, huge bodies and headers", async () => {
  checkShape(await raw("/v1/chat/completions", "{\"messages\": [", {}), 400, "not valid JSON");
  checkShape(await raw("/v1/chat/completions", Buffer.from([0x7b, 0x22, 0x6d, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d])), 400, "UTF-8");
  checkShape(await raw("/v1/chat/completions", JSON.stringify({ messages: user("a".repeat(20 << 20)) })), 413, "larger than");
  checkShape(await raw("/v1/chat/completions", JSON.stringify({ messages: user("hi") }), { "X-Big": "a".repeat(20000) }), 400);
});

await check("errors: a full queue answers 429 (RateLimitError), then serves again", async () => {
  // One slot, a queue of one: a long stream runs, a second request waits, a third is refused.
  const ctl = new AbortController();
  const first = await tight.completions.create({ model: "dsa-mini", prompt: "Once upon a time", max_tokens: 4000,
                                                ignore_eos: true, stream: true }, { signal: ctl.signal });
  const it = first[Symbol.asyncIterator]();
  await it.next();
  await it.next();  // the first is generating
  const second = tight.completions.create({ model: "dsa-mini", prompt: "Hello", max_tokens: 2 });
  // Wait until the second one is queued.
  for (let i = 0; i < 200; i++) {
    const m = await (await fetch(urlTight + "/metrics")).text();
    if (/^dsa:num_requests_waiting 1$/m.test(m)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const e = await expectError(tight.completions.create({ model: "dsa-mini", prompt: "Hi", max_tokens: 2 }), 429, { code: "queue_full" });
  assert.ok(e instanceof OpenAI.RateLimitError);
  ctl.abort();  // the first client leaves: its request is cancelled, the second runs
  const r2 = await second;
  assert.equal(r2.choices.length, 1);
  const r3 = await tight.completions.create({ model: "dsa-mini", prompt: "Hi", max_tokens: 2 });
  assert.equal(r3.choices.length, 1);
});

console.log(`all ${checks} checks passed`);
