#pragma once
// StepStats: where the steps of a run went, by kind, in one definition for `dsa bench` and `dsa serve`
// (docs/server.md "Overhead"), so that a server run and a bench run of the same load can be compared
// line for line: did the engine run the same schedule (how many decode-only, mixed and prefill-only
// steps, how many tokens each), and did each kind of step take as long?
//
//   StepStats s;
//   auto t0 = now(); outs = eng.step(); s.add(eng.last_step(), seconds(now() - t0));
//   ... hand the outputs on ...;        s.add_between(seconds since step() returned);
//   std::puts(s.report("  ").c_str());
//
// Kinds: decode-only (every row a one-token decode row), mixed (decode rows and prefill chunks in one
// step), prefill-only (no decode row), empty (nothing planned: cancellations only). A step's time is
// split as StepTiming has it: forward (the model's forward call: on a GPU the launches), sample/sync
// (sampling and the wait for the device), host (the rest of step(): schedule, batch build, commit with
// detokenisation and stop strings); `between` is what the stepping thread did after step() returned
// and before the next step() (bench: its bookkeeping; server: handing the outputs to the HTTP threads).
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace dsa {

struct StepStats {
  enum Kind { kDecode, kMixed, kPrefill, kEmpty, kKinds };
  struct Sum {
    int64_t steps = 0, rows = 0, decode_rows = 0, tokens = 0;
    double step_s = 0, forward_s = 0, sample_s = 0, between_s = 0;
    double host_s() const { return step_s - forward_s - sample_s; }
  };
  Sum sum[kKinds];
  // The stepping thread over the stretches it stepped (ThreadUsage differences): how often the
  // kernel took its core away (involuntary context switches), and its CPU time against wall time.
  int64_t involuntary_switches = 0;
  double thread_cpu_s = 0, thread_wall_s = 0;

  static Kind kind_of(const StepTiming& t);
  static const char* kind_name(Kind k);  // "decode", "mixed", "prefill", "empty"
  // One step: its timing and the wall time of the step() call that ran it.
  void add(const StepTiming& t, double step_s);
  // Time the stepping thread spent after the last step() returned, before the next one (or idling).
  void add_between(double s);
  int64_t steps() const;
  // The decode-only line in dsa bench's words ("decode-only steps: N, X ms each = forward (enqueue) ...")
  // and a line for the other kinds; `indent` starts each line.
  std::string report(const std::string& indent) const;

 private:
  Kind last_ = kEmpty;
  bool have_last_ = false;
};

// The calling thread's resource usage (getrusage RUSAGE_THREAD) and the wall clock, to difference.
struct ThreadUsage {
  int64_t involuntary_switches = 0;
  double cpu_s = 0, wall_s = 0;
  static ThreadUsage now();
  // Adds what happened since `start` (on this thread) to s.
  void add_since(StepStats& s) const;
};

// p-th percentile (0..100) by linear interpolation between order statistics, as dsa bench and
// scripts/serve_load.py compute it; 0 for an empty set.
double percentile(std::vector<double> v, double p);

}  // namespace dsa
