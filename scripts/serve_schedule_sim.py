#!/usr/bin/env python3
"""What a client's round trip and per-output host work do to a closed-loop load, on a GPU-like step cost.

  scripts/serve_schedule_sim.py [--preset real32|real128|mini32] [--rtt-ms 0,0.3,1] [--per-output-us 0,2,8]

Simulates the scheduler's policy (src/runtime/scheduler.cpp: decode rows first, then prefill chunks of
waiting requests in arrival order under the step's token budget) on a closed loop of C clients with equal
lengths, as `dsa bench --requests N --concurrency C` and scripts/serve_load.py drive it, with a step cost of

  step = base + prefill_us * prefill tokens + per_output_us * rows

(`base`: a decode step, flat in the rows as on a GPU; `per_output_us`: host work on the stepping thread
for each output it hands on, which the GPU waits for). A finished request's successor arrives `rtt` after
the step that finished it and joins the first step that starts after that (rtt 0: before the next
step, as dsa bench's own loop). Prints output tok/s, TTFT / TPOT p50 (on the client's clock: from when
the successor was sent) and the step counts. The presets' costs are the H100 numbers of bench/RESULTS.md
("Server (issue 12)", GPU 2026-12-07): decode-only step times of dsa bench, and a per-prefill-token cost
that puts the rtt-0 wall time near dsa bench's. docs/server.md "Overhead" reads the output.
"""
import argparse
import statistics


def simulate(C, N, I, O, budget, base_s, prefill_s, per_output_s, rtt_s):
    t = 0.0
    pending = [(0.0, i) for i in range(C)]  # (sent at, id), not yet in the engine
    waiting = []
    running = {}  # id -> [computed, generated, first token at, sent at]
    order = []
    nxt, done, steps, mixed = C, 0, 0, 0
    ttft, tpot = [], []
    while done < N:
        arrived = [p for p in pending if p[0] <= t]
        pending = [p for p in pending if p[0] > t]
        waiting += sorted(arrived)
        if not running and not waiting:
            t = min(p[0] for p in pending)
            continue
        left = budget
        plan = []
        for rid in order:
            if running[rid][0] >= I:
                plan.append((rid, 1))
                left -= 1
        decode_rows = len(plan)
        prefill = 0
        for rid in order:
            r = running[rid]
            if r[0] < I and left > 0:
                n = min(I - r[0], left)
                plan.append((rid, n))
                left -= n
                prefill += n
        while waiting and left > 0:
            sent, rid = waiting.pop(0)
            running[rid] = [0, 0, None, sent]
            order.append(rid)
            n = min(I, left)
            plan.append((rid, n))
            left -= n
            prefill += n
        t += base_s + prefill_s * prefill + per_output_s * len(plan)
        steps += 1
        mixed += prefill > 0 and decode_rows > 0
        for rid, n in plan:
            r = running[rid]
            if r[0] >= I:
                r[1] += 1
            else:
                r[0] += n
                if r[0] >= I:
                    r[1], r[2] = 1, t
            if r[1] >= O:
                ttft.append(r[2] - r[3])
                tpot.append((t - r[2]) / (O - 1))
                del running[rid]
                order.remove(rid)
                done += 1
                if nxt < N:
                    pending.append((t + rtt_s, nxt))
                    nxt += 1
    return {"tok_s": N * O / t, "ttft_ms": statistics.median(ttft) * 1e3, "tpot_ms": statistics.median(tpot) * 1e3,
            "steps": steps, "mixed": mixed}


PRESETS = {  # C, decode step (s), prefill cost per token (s)
    "real32": (32, 2.6e-3, 8.3e-6),
    "real128": (128, 3.6e-3, 8.3e-6),
    "mini32": (32, 1.45e-3, 13e-6),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="real32,real128,mini32")
    ap.add_argument("--rtt-ms", default="0,0.3,1")
    ap.add_argument("--per-output-us", default="0,2,8")
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--budget", type=int, default=8192, help="tokens per step (--max-batch-tokens)")
    a = ap.parse_args()
    for name in a.preset.split(","):
        C, base, pre = PRESETS[name]
        ref = None
        for ov in (float(x) for x in a.per_output_us.split(",")):
            for rtt in (float(x) for x in a.rtt_ms.split(",")):
                r = simulate(C, 4 * C, a.input_len, a.output_len, a.budget, base, pre, ov * 1e-6, rtt * 1e-3)
                ref = ref or r["tok_s"]
                print(f"{name:8s} C={C:3d} rtt {rtt:4.1f} ms, {ov:3.0f} us/output: {r['tok_s']:8.1f} tok/s "
                      f"({100 * (1 - r['tok_s'] / ref):5.1f}% below rtt 0, 0 us) | TTFT p50 {r['ttft_ms']:6.1f} ms, "
                      f"TPOT p50 {r['tpot_ms']:5.2f} ms | {r['steps']} steps, {r['mixed']} mixed")


if __name__ == "__main__":
    main()
