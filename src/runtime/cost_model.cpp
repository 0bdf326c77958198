#include "runtime/cost_model.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dsa {

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r") - a + 1);
}

double number(const std::string& field, const std::string& what, int64_t line, const char* name) {
  const std::string f = trim(field);
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(f.c_str(), &end);
  DSA_CHECK(!f.empty() && end == f.c_str() + f.size() && errno == 0 && std::isfinite(v), what, ":", line, ": ", name,
            " '", f, "' is not a finite number");
  return v;
}

}  // namespace

CostMeasurements CostMeasurements::parse(const std::string& text, const std::string& what) {
  CostMeasurements m;
  std::istringstream in(text);
  std::string line;
  bool header = false;
  for (int64_t ln = 1; std::getline(in, line); ++ln) {
    const std::string t = trim(line);
    if (t.empty()) continue;
    if (t[0] == '#') {
      m.notes.push_back(trim(t.substr(1)));
      continue;
    }
    std::vector<std::string> f;
    std::stringstream ss(t);
    for (std::string c; std::getline(ss, c, ',');) f.push_back(trim(c));
    if (f.size() == 4 && f[0] == "phase") {  // the header (may repeat when benches append to one file)
      DSA_CHECK(f[1] == "attention" && f[2] == "position" && f[3] == "us_per_token", what, ":", ln,
                ": expected the header 'phase,attention,position,us_per_token'");
      header = true;
      continue;
    }
    DSA_CHECK(header, what, ":", ln, ": data before the header 'phase,attention,position,us_per_token'");
    DSA_CHECK(f.size() == 4, what, ":", ln, ": expected 4 comma-separated fields, got ", f.size());
    DSA_CHECK(f[0] == "prefill" || f[0] == "decode", what, ":", ln, ": phase '", f[0], "' is not prefill or decode");
    DSA_CHECK(f[1] == "dense" || f[1] == "dsa" || f[1] == "rest", what, ":", ln, ": attention '", f[1],
              "' is not dense, dsa or rest");
    const double pos = number(f[2], what, ln, "position"), us = number(f[3], what, ln, "us_per_token");
    DSA_CHECK(pos >= 0, what, ":", ln, ": position ", pos, " is negative");
    DSA_CHECK(us >= 0, what, ":", ln, ": us_per_token ", us, " is negative");
    if (f[1] == "rest") {
      DSA_CHECK(!m.rest_us.count(f[0]), what, ":", ln, ": a second '", f[0], ",rest' row");
      m.rest_us[f[0]] = us;
      continue;
    }
    auto& s = m.series[{f[0], f[1]}];
    for (auto& [p, v] : s) DSA_CHECK(p != pos, what, ":", ln, ": a second ", f[0], ",", f[1], " row at position ", pos);
    s.emplace_back(pos, us);
  }
  DSA_CHECK(!m.series.empty(), what, ": no measurements (expected rows 'phase,attention,position,us_per_token')");
  for (auto& [k, s] : m.series) std::sort(s.begin(), s.end());
  return m;
}

CostMeasurements CostMeasurements::from_file(const std::string& path) {
  std::error_code ec;
  DSA_CHECK(std::filesystem::is_regular_file(path, ec), "measurements '", path, "': not a regular file");
  std::ifstream f(path, std::ios::binary);
  DSA_CHECK(f.good(), "measurements '", path, "': cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  return parse(ss.str(), path);
}

double interpolate_linear(const std::vector<std::pair<double, double>>& pts, double x) {
  DSA_CHECK(!pts.empty(), "interpolate_linear: no points");
  if (pts.size() == 1) return std::max(0.0, pts[0].second);
  size_t i = 1;  // the segment [i-1, i] that holds x, or the end segment
  while (i + 1 < pts.size() && x > pts[i].first) ++i;
  const auto [x0, y0] = pts[i - 1];
  const auto [x1, y1] = pts[i];
  return std::max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0));
}

std::vector<CostRow> cost_table(const CostMeasurements& m, const CostOptions& o, const std::vector<int64_t>& positions) {
  auto cost = [&](const std::string& phase, const std::string& att, int64_t p) {
    auto it = m.series.find({phase, att});
    if (it == m.series.end()) return -1.0;
    auto r = m.rest_us.find(phase);
    return dollars_per_million_tokens(interpolate_linear(it->second, double(p)) + (r == m.rest_us.end() ? 0.0 : r->second), o);
  };
  std::vector<CostRow> rows;
  for (int64_t p : positions)
    rows.push_back({p, cost("prefill", "dense", p), cost("prefill", "dsa", p), cost("decode", "dense", p),
                    cost("decode", "dsa", p)});
  return rows;
}

}  // namespace dsa
