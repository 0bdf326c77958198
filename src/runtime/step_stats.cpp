#include "runtime/step_stats.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace dsa {

StepStats::Kind StepStats::kind_of(const StepTiming& t) {
  if (t.seqs == 0) return kEmpty;
  if (t.decode_rows == t.seqs) return kDecode;
  return t.decode_rows > 0 ? kMixed : kPrefill;
}

const char* StepStats::kind_name(Kind k) {
  switch (k) {
    case kDecode: return "decode";
    case kMixed: return "mixed";
    case kPrefill: return "prefill";
    default: return "empty";
  }
}

void StepStats::add(const StepTiming& t, double step_s) {
  const Kind k = kind_of(t);
  Sum& s = sum[k];
  ++s.steps;
  s.rows += t.seqs;
  s.decode_rows += t.decode_rows;
  s.tokens += t.tokens;
  s.step_s += step_s;
  s.forward_s += t.forward_s;
  s.sample_s += t.sample_s;
  last_ = k;
  have_last_ = true;
}

void StepStats::add_between(double s) {
  if (have_last_) sum[last_].between_s += s;
}

int64_t StepStats::steps() const {
  int64_t n = 0;
  for (const Sum& s : sum) n += s.steps;
  return n;
}

std::string StepStats::report(const std::string& indent) const {
  std::string out;
  char b[512];
  const Sum& d = sum[kDecode];
  if (d.steps > 0) {
    const double n = double(d.steps);
    std::snprintf(b, sizeof b,
                  "%sdecode-only steps: %ld, %.2f ms each = forward (enqueue) %.2f + sample/sync %.2f + host %.3f ms (%.1f%%), "
                  "then %.3f ms between steps; %.1f rows each\n",
                  indent.c_str(), long(d.steps), d.step_s / n * 1e3, d.forward_s / n * 1e3, d.sample_s / n * 1e3,
                  d.host_s() / n * 1e3, d.step_s > 0 ? 100.0 * d.host_s() / d.step_s : 0.0, d.between_s / n * 1e3,
                  double(d.rows) / n);
    out += b;
  }
  const Sum& m = sum[kMixed];
  const Sum& p = sum[kPrefill];
  if (m.steps + p.steps + sum[kEmpty].steps > 0) {
    std::string line = indent + "other steps:";
    if (m.steps > 0) {
      const double n = double(m.steps);
      std::snprintf(b, sizeof b, " mixed %ld, %.2f ms each (%.1f decode rows + %.0f prefill tokens), then %.3f ms between;",
                    long(m.steps), m.step_s / n * 1e3, double(m.decode_rows) / n, double(m.tokens - m.decode_rows) / n,
                    m.between_s / n * 1e3);
      line += b;
    }
    if (p.steps > 0) {
      const double n = double(p.steps);
      std::snprintf(b, sizeof b, " prefill-only %ld, %.2f ms each (%.0f tokens), then %.3f ms between;", long(p.steps),
                    p.step_s / n * 1e3, double(p.tokens) / n, p.between_s / n * 1e3);
      line += b;
    }
    if (sum[kEmpty].steps > 0) {
      std::snprintf(b, sizeof b, " empty %ld;", long(sum[kEmpty].steps));
      line += b;
    }
    line.back() = '\n';
    out += line;
  }
  if (thread_wall_s > 0) {
    std::snprintf(b, sizeof b,
                  "%sstepping thread: %ld involuntary context switches (%.2f per step), on a CPU %.1f%% of its %.2f s "
                  "of stepping\n",
                  indent.c_str(), long(involuntary_switches), double(involuntary_switches) / double(std::max<int64_t>(1, steps())),
                  100.0 * thread_cpu_s / thread_wall_s, thread_wall_s);
    out += b;
  }
  return out;
}

ThreadUsage ThreadUsage::now() {
  ThreadUsage u;
  rusage ru{};
  if (getrusage(RUSAGE_THREAD, &ru) == 0) {
    u.involuntary_switches = int64_t(ru.ru_nivcsw);
    u.cpu_s = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  }
  u.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  return u;
}

void ThreadUsage::add_since(StepStats& s) const {
  const ThreadUsage e = now();
  s.involuntary_switches += e.involuntary_switches - involuntary_switches;
  s.thread_cpu_s += e.cpu_s - cpu_s;
  s.thread_wall_s += e.wall_s - wall_s;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * double(v.size() - 1);
  const size_t i = size_t(pos);
  const double f = pos - double(i);
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

}  // namespace dsa
