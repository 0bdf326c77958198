#!/usr/bin/env python3
"""Load generator for `dsa serve`, Python 3 standard library only (it runs on the GPU machine, which has
no Node.js; tests/server_e2e/load.mjs is the same on the `openai` npm client).

Closed loop: C clients keep C streaming /v1/completions requests in flight until N have been sent, as
`dsa bench --requests N --concurrency C --input-len I --output-len O` does inside the engine. Each
prompt is I random token ids (a list of ids: the length is exact; ids from 2 up, as dsa bench draws
them, distinct per request: no prefix-cache hits), or --prompt text: I random words. Each request asks
for max_tokens O with ignore_eos (so every request generates exactly O tokens), greedy by default
(temperature 0, as dsa bench), stream with stream_options.include_usage.

Reported per concurrency level, in dsa bench's definitions (src/tools/cmd_bench.cpp):
  requests/s and output tok/s  = N / wall and the sum of usage.completion_tokens / wall, wall = from the
                                 first request sent to the last stream's end
  TTFT                         = first streamed text - request sent (client clock)
  TPOT                         = (finish - first text) / (completion_tokens - 1), finish = the chunk that
                                 carries finish_reason
  p50 / p99                    = linear interpolation between order statistics, as dsa bench
  client turnaround            = a client's stream end -> its next request sent (building the prompt, JSON):
                                 the round trip `dsa bench --client-rtt MS` gives the engine alone, whose
                                 own closed loop submits a finished request's successor before the next step
The clients run in --procs processes (threads inside each), so that parsing the events of a fast GPU
server is not held up by one interpreter lock.

  scripts/serve_load.py --url http://127.0.0.1:8000 --concurrency 1,8 --requests 8,32 --input-len 1024 \\
                        --output-len 64 [--prompt ids|text] [--wait 120] [--json out.json]
"""
import argparse
import http.client
import json
import math
import multiprocessing as mp
import os
import random
import re
import resource
import sys
import threading
import time
import urllib.parse

WORDS = ["the", "river", "stone", "north", "winter", "green", "house", "light", "quiet", "market", "letter", "garden"]


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)  # one clock for every process of this machine


def percentile(v, p):
    """dsa bench's percentile: linear interpolation at p/100 * (n - 1)."""
    if not v:
        return float("nan")
    s = sorted(v)
    pos = p / 100.0 * (len(s) - 1)
    i = int(pos)
    f = pos - i
    return s[i] * (1 - f) + s[i + 1] * f if i + 1 < len(s) else s[i]


class Target:
    def __init__(self, url, api_key, timeout):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http":
            sys.exit(f"serve_load: only http:// URLs ({url})")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.base = u.path.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = "Bearer " + api_key
        self.timeout = timeout

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def get(self, path, timeout=5):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request("GET", self.base + path, headers=self.headers)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def post(self, path, body, timeout=60):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request("POST", self.base + path, body=json.dumps(body).encode(), headers=self.headers)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def wait_healthy(t, seconds):
    deadline = now() + seconds
    last = None
    while now() < deadline:
        try:
            st, _ = t.get("/health", timeout=2)
            if st == 200:
                return True
            last = f"HTTP {st}"
        except OSError as e:
            last = str(e)
        time.sleep(0.25)
    print(f"serve_load: {t.host}:{t.port} not healthy after {seconds:.0f} s ({last})", file=sys.stderr)
    return False


def probe_vocab(t, model):
    """The vocabulary size from the server's answer to an out-of-range token id ("... in [0, V) ...")."""
    body = {"prompt": [2**31 - 1], "max_tokens": 1}
    if model:
        body["model"] = model
    st, b = t.post("/v1/completions", body)
    m = re.search(r"\[0, (\d+)\)", b.decode(errors="replace"))
    if st != 400 or not m:
        sys.exit(f"serve_load: cannot learn the vocabulary size from the server (HTTP {st}: {b[:200]!r}); pass --vocab")
    return int(m.group(1))


def make_prompt(a, i, vocab):
    rng = random.Random(a.seed * 1000003 + i)
    if a.prompt == "ids":
        return [2 + rng.randrange(max(1, vocab - 2)) for _ in range(a.input_len)]
    return " ".join(rng.choice(WORDS) for _ in range(a.input_len))


def one_request(t, conn, body):
    """One streaming request on `conn` (None: open one). Returns (conn or None, record)."""
    rec = {"t0": 0.0, "first": None, "finish": None, "end": 0.0, "tokens": 0, "prompt_tokens": 0, "error": None}
    payload = json.dumps(body).encode()
    for attempt in (0, 1):
        fresh = conn is None
        if fresh:
            conn = t.connect()
        rec["t0"] = now()
        try:
            conn.request("POST", t.base + "/v1/completions", body=payload, headers=t.headers)
            resp = conn.getresponse()
            break
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
            conn.close()
            conn = None
            if fresh or attempt == 1:  # a kept-alive connection the server had closed: once more on a new one
                rec["error"] = f"{type(e).__name__}: {e}"
                rec["end"] = now()
                return None, rec
    if resp.status != 200:
        rec["error"] = f"HTTP {resp.status}: {resp.read()[:300].decode(errors='replace')}"
        rec["end"] = now()
        if resp.will_close:
            conn.close()
            conn = None
        return conn, rec
    buf = b""
    done = False
    last_text = None
    try:
        while True:
            data = resp.read1(65536)
            ts = now()
            if not data:
                break
            buf += data
            while True:
                k = buf.find(b"\n\n")
                if k < 0:
                    break
                ev, buf = buf[:k], buf[k + 2:]
                for line in ev.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    p = line[5:].strip()
                    if p == b"[DONE]":
                        done = True
                        continue
                    j = json.loads(p)
                    if "error" in j:
                        rec["error"] = "stream error: " + str(j["error"].get("message", j["error"]))
                        continue
                    for c in j.get("choices") or ():
                        if c.get("text"):
                            last_text = ts
                            if rec["first"] is None:
                                rec["first"] = ts
                        if c.get("finish_reason") and rec["finish"] is None:
                            rec["finish"] = ts
                    u = j.get("usage")
                    if u:
                        rec["tokens"] = int(u.get("completion_tokens", 0))
                        rec["prompt_tokens"] = int(u.get("prompt_tokens", 0))
    except (OSError, http.client.HTTPException, ValueError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        conn.close()
        conn = None
    rec["end"] = now()
    if rec["finish"] is None:
        rec["finish"] = last_text
    if rec["error"] is None and not done:
        rec["error"] = "the stream ended without data: [DONE]"
    if conn is not None and resp.will_close:
        conn.close()
        conn = None
    return conn, rec


def worker_process(a, vocab, n_threads, counter, lock, barrier, out_q, total):
    t = Target(a.url, a.api_key, a.timeout)
    records = []
    rec_lock = threading.Lock()

    def take():
        with lock:
            i = counter.value
            if i >= total:
                return None
            counter.value = i + 1
            return i

    def client():
        conn = None
        mine = []
        prev_end = None
        while True:
            i = take()
            if i is None:
                break
            body = {"prompt": make_prompt(a, i, vocab), "max_tokens": a.output_len, "temperature": a.temperature,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            if a.temperature > 0:
                body["seed"] = a.seed + i
            if a.model:
                body["model"] = a.model
            conn, rec = one_request(t, conn, body)
            rec["i"] = i
            # This client's round trip between requests: its last stream ended -> this request sent.
            rec["turnaround"] = rec["t0"] - prev_end if prev_end is not None else None
            prev_end = rec["end"]
            mine.append(rec)
        if conn is not None:
            conn.close()
        with rec_lock:
            records.extend(mine)

    barrier.wait()  # every process is up: start together
    threads = [threading.Thread(target=client) for _ in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out_q.put((records, ru.ru_utime + ru.ru_stime))


def run_level(a, vocab, conc, total):
    ctx = mp.get_context("fork")
    procs = a.procs or max(1, min(conc, math.ceil(conc / 16), max(1, (os.cpu_count() or 2) // 4)))
    procs = min(procs, conc)
    counter = ctx.Value("q", 0, lock=False)
    lock = ctx.Lock()
    barrier = ctx.Barrier(procs)
    q = ctx.Queue()
    share = [conc // procs + (1 if k < conc % procs else 0) for k in range(procs)]
    ps = [ctx.Process(target=worker_process, args=(a, vocab, share[k], counter, lock, barrier, q, total)) for k in range(procs)]
    for p in ps:
        p.start()
    records, cpu = [], 0.0
    for _ in ps:
        r, c = q.get()
        records.extend(r)
        cpu += c
    for p in ps:
        p.join()
    return records, cpu, procs


def summarize(a, conc, records, cpu, procs):
    ok = [r for r in records if r["error"] is None]
    errs = [r for r in records if r["error"] is not None]
    t0 = min(r["t0"] for r in records)
    t1 = max(r["end"] for r in records)
    wall = max(t1 - t0, 1e-9)
    out_tok = sum(r["tokens"] for r in ok)
    in_tok = sum(r["prompt_tokens"] for r in ok)
    ttft = [r["first"] - r["t0"] for r in ok if r["first"] is not None]
    tpot = [(r["finish"] - r["first"]) / (r["tokens"] - 1) for r in ok
            if r["first"] is not None and r["finish"] is not None and r["tokens"] > 1]
    lat = [r["end"] - r["t0"] for r in ok]
    turn = [r["turnaround"] for r in records if r.get("turnaround") is not None]
    short = sum(1 for r in ok if r["tokens"] != a.output_len)
    bad_prompt = sum(1 for r in ok if a.prompt == "ids" and r["prompt_tokens"] != a.input_len)
    res = {
        "concurrency": conc, "requests": len(records), "errors": len(errs), "seconds": wall,
        "requests_per_s": len(records) / wall, "output_tokens_per_s": out_tok / wall,
        "total_tokens_per_s": (out_tok + in_tok) / wall, "output_tokens": out_tok, "prompt_tokens": in_tok,
        "ttft_p50_ms": percentile(ttft, 50) * 1e3, "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "tpot_p50_ms": percentile(tpot, 50) * 1e3, "tpot_p99_ms": percentile(tpot, 99) * 1e3,
        "latency_p50_s": percentile(lat, 50), "wrong_output_len": short, "wrong_prompt_len": bad_prompt,
        "turnaround_p50_ms": percentile(turn, 50) * 1e3 if turn else None,
        "turnaround_p99_ms": percentile(turn, 99) * 1e3 if turn else None,
        "client_cpu_s": cpu, "client_procs": procs,
        "first_error": errs[0]["error"] if errs else None,
    }
    print(f"serve_load: {len(records)} requests, concurrency {conc}, prompts {a.input_len}"
          f"{'' if a.prompt == 'ids' else ' words'}, outputs {a.output_len}")
    print(f"  {res['requests_per_s']:.3f} requests/s, {res['output_tokens_per_s']:.1f} output tok/s, "
          f"{res['total_tokens_per_s']:.1f} total tok/s over {wall:.2f} s")
    print(f"  TTFT p50 {res['ttft_p50_ms']:.1f} ms, p99 {res['ttft_p99_ms']:.1f} ms | TPOT p50 {res['tpot_p50_ms']:.2f} ms, "
          f"p99 {res['tpot_p99_ms']:.2f} ms | latency p50 {res['latency_p50_s']:.2f} s")
    print(f"  errors {len(errs)}, wrong output length {short}, wrong prompt length {bad_prompt} | client: {procs} "
          f"process(es), {cpu:.2f} s CPU ({100 * cpu / wall:.0f}% of one core)")
    if turn:
        # What `dsa bench --client-rtt` models: a finished request's successor is sent this long after.
        print(f"  client turnaround (a stream's end to the same client's next request sent) p50 "
              f"{res['turnaround_p50_ms']:.2f} ms, p99 {res['turnaround_p99_ms']:.2f} ms")
    if errs:
        print(f"  first error: {errs[0]['error']}")
    sys.stdout.flush()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", default="1,8,32,128", help="levels, comma-separated")
    ap.add_argument("--requests", default="", help="requests per level: one number or one per level (default 4 x C)")
    ap.add_argument("--input-len", type=int, default=1024, help="prompt tokens (ids) or words (text)")
    ap.add_argument("--output-len", type=int, default=64, help="max_tokens, with ignore_eos")
    ap.add_argument("--prompt", choices=["ids", "text"], default="ids")
    ap.add_argument("--vocab", type=int, default=0, help="vocabulary size for random ids (default: config.json of "
                    "--model-dir, else asked of the server)")
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--model", default="", help="the request's `model` (default: none, the served one)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy, as dsa bench")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--procs", type=int, default=0, help="client processes (0: C/16, at most cores/4)")
    ap.add_argument("--warmup", type=int, default=0, help="requests sent one by one before the first level, not counted")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a request's socket may stay silent")
    ap.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for GET /health = 200 first")
    ap.add_argument("--api-key", default=os.environ.get("DSA_API_KEY", ""))
    ap.add_argument("--json", default="", help="write the results here")
    a = ap.parse_args()
    levels = [int(x) for x in a.concurrency.split(",") if x]
    if a.requests:
        ns = [int(x) for x in a.requests.split(",") if x]
        if len(ns) == 1:
            ns = ns * len(levels)
        if len(ns) != len(levels):
            sys.exit("serve_load: --requests takes one number or one per --concurrency level")
    else:
        ns = [4 * c for c in levels]
    if any(c < 1 for c in levels) or any(n < 1 for n in ns) or a.input_len < 1 or a.output_len < 1:
        sys.exit("serve_load: concurrency, requests, --input-len and --output-len must be >= 1")
    t = Target(a.url, a.api_key, a.timeout)
    if a.wait > 0 and not wait_healthy(t, a.wait):
        sys.exit(3)
    vocab = a.vocab
    if a.prompt == "ids" and vocab == 0:
        if a.model_dir:
            with open(os.path.join(a.model_dir, "config.json")) as f:
                vocab = int(json.load(f)["vocab_size"])
        else:
            vocab = probe_vocab(t, a.model)
    for i in range(a.warmup):
        body = {"prompt": make_prompt(a, 10**9 + i, vocab), "max_tokens": a.output_len, "temperature": a.temperature,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        _, rec = one_request(t, None, body)
        if rec["error"]:
            sys.exit(f"serve_load: warm-up request failed: {rec['error']}")
    results = []
    for c, n in zip(levels, ns):
        records, cpu, procs = run_level(a, vocab, c, n)
        results.append(summarize(a, c, records, cpu, procs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"url": a.url, "input_len": a.input_len, "output_len": a.output_len, "prompt": a.prompt,
                       "temperature": a.temperature, "results": results}, f, indent=2)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
