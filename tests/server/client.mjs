// Drives a running `dspark serve` with the official openai client (and raw fetch for the
// error cases). Usage: node client.mjs BASE_URL EXPECT_JSON
// EXPECT_JSON holds the texts `dspark generate` produced for the same prompts (greedy), so
// this checks that greedy outputs through the server equal `dspark generate`.
import OpenAI from "openai";
import { readFileSync } from "node:fs";

const base = process.argv[2];
const expect = JSON.parse(readFileSync(process.argv[3], "utf8"));
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "none", maxRetries: 0 });
let passed = 0, failed = 0;
function check(cond, what) {
  if (cond) passed++;
  else { failed++; console.error("FAIL " + what); }
}

// plain completion, greedy, string prompt
const c1 = await client.completions.create({ model: "tiny-chat", prompt: expect.prompt, max_tokens: expect.n, temperature: 0 });
check(c1.choices[0].text === expect.completion, `completion text ${JSON.stringify(c1.choices[0].text)} != generate ${JSON.stringify(expect.completion)}`);
check(["stop", "length"].includes(c1.choices[0].finish_reason), "completion finish_reason " + c1.choices[0].finish_reason);
check(c1.usage && c1.usage.completion_tokens > 0 && c1.usage.prompt_tokens > 0, "completion usage");

// the same, streamed
const s1 = await client.completions.create({ model: "tiny-chat", prompt: expect.prompt, max_tokens: expect.n, temperature: 0, stream: true });
let text = "", last = null;
for await (const ev of s1) { text += ev.choices[0].text; last = ev.choices[0].finish_reason || last; }
check(text === expect.completion, `streamed completion ${JSON.stringify(text)} != ${JSON.stringify(expect.completion)}`);
check(last === c1.choices[0].finish_reason, "streamed finish_reason " + last);

// chat, greedy, plain and streamed
const ch = await client.chat.completions.create({ model: "tiny-chat", messages: [{ role: "user", content: expect.prompt }],
                                                  max_tokens: expect.n, temperature: 0 });
check(ch.choices[0].message.content === expect.chat, `chat ${JSON.stringify(ch.choices[0].message.content)} != ${JSON.stringify(expect.chat)}`);
const cs = await client.chat.completions.create({ model: "tiny-chat", messages: [{ role: "user", content: expect.prompt }],
                                                  max_tokens: expect.n, temperature: 0, stream: true });
let ctext = "";
for await (const ev of cs) ctext += ev.choices[0].delta.content || "";
check(ctext === expect.chat, "streamed chat differs");

// token-id prompt, seeded sampling reproduces
const a = await client.completions.create({ model: "tiny-chat", prompt: [5, 6, 7, 8], max_tokens: 6, temperature: 1, seed: 7 });
const b = await client.completions.create({ model: "tiny-chat", prompt: [5, 6, 7, 8], max_tokens: 6, temperature: 1, seed: 7 });
check(a.choices[0].text === b.choices[0].text, "seeded sampling not reproducible");

// stop string: output never contains it
if (expect.completion.length > 2) {
  const stop = expect.completion.slice(1, 2);
  const st = await client.completions.create({ model: "tiny-chat", prompt: expect.prompt, max_tokens: expect.n, temperature: 0, stop: [stop] });
  check(!st.choices[0].text.includes(stop) && st.choices[0].finish_reason === "stop", "stop string");
}

// models
const models = await client.models.list();
check(models.data.length === 1 && models.data[0].id === "tiny-chat", "models list");

// error cases: 4xx JSON errors, never a crash
async function raw(path, init) {
  const r = await fetch(base + path, init);
  let body = null;
  try { body = await r.json(); } catch { body = null; }
  return [r.status, body];
}
let [st1, b1] = await raw("/v1/completions", { method: "POST", body: "{not json" });
check(st1 === 400 && b1 && b1.error && /JSON/.test(b1.error.message), "malformed JSON -> 400");
[st1, b1] = await raw("/v1/completions", { method: "POST", body: JSON.stringify({ prompt: "x", max_tokens: -3 }) });
check(st1 === 400 && b1.error.message.includes("max_tokens"), "bad max_tokens -> 400");
[st1, b1] = await raw("/v1/completions", { method: "POST", body: JSON.stringify({ prompt: [1, 99999] }) });
check(st1 === 400, "token out of range -> 400");
[st1, b1] = await raw("/v1/nope", { method: "GET" });
check(st1 === 404, "unknown endpoint -> 404");
[st1, b1] = await raw("/v1/completions", { method: "POST", body: "x".repeat(3 << 20) });
check(st1 === 413, "oversize body -> 413, got " + st1);

// a client that disconnects mid-stream frees its slot
const ctrl = new AbortController();
try {
  const s = await client.completions.create({ model: "tiny-chat", prompt: [3, 4, 5], max_tokens: 100000, temperature: 1, stream: true },
                                            { signal: ctrl.signal });
  let k = 0;
  for await (const ev of s) { if (++k == 3) ctrl.abort(); }
} catch (e) { /* aborted */ }
let running = -1;
for (let i = 0; i < 50; i++) {
  await new Promise((r) => setTimeout(r, 100));
  const m = await (await fetch(base + "/metrics")).text();
  running = Number(/dspark_requests_running (\d+)/.exec(m)[1]);
  if (running === 0) break;
}
check(running === 0, "slot not freed after disconnect: running " + running);
const h = await fetch(base + "/health");
check(h.status === 200, "health after errors");
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
