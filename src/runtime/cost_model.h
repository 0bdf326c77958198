#pragma once
// Serving cost per million tokens against token position, prefill and decode, dense vs DSA
// (architecture.md §9.6, the paper's Figure 3), from measured per-layer times: `dsa cost`
// (tools/cmd_cost.cpp) reads what the GPU benches write with --cost-csv (docs/cost.md).
//
// Measurements, one CSV row per point, '#' lines are notes (device, commit, batch):
//   phase,attention,position,us_per_token
//   decode,dsa,16384,13.6      one layer's attention for one token at that position (µs)
//   decode,rest,0,4.1          one layer's position-independent work per token (projections, MoE)
// phase: prefill | decode; attention: dense | dsa | rest.
// A token's cost at position p is layers x (attention(p) + rest) GPU-seconds at the price per
// GPU-hour; attention(p) is piecewise linear between the measured positions (attention work
// grows linearly with the context in both forms: dense over p keys, DSA's indexer over p keys).
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dsa {

struct CostMeasurements {
  std::vector<std::string> notes;  // the '#' lines, without the '#'
  // (phase, attention) -> (position, µs per token per layer), sorted by position, one per position
  std::map<std::pair<std::string, std::string>, std::vector<std::pair<double, double>>> series;
  std::map<std::string, double> rest_us;  // phase -> µs per token per layer (0 if not measured)

  // `what` names the source in errors (file name); every bad line is an error naming it.
  static CostMeasurements parse(const std::string& text, const std::string& what);
  static CostMeasurements from_file(const std::string& path);
  bool has(const std::string& phase, const std::string& attention) const {
    return series.count({phase, attention}) > 0;
  }
};

// Piecewise-linear through the points, extended linearly past both ends by the end segments
// (a single point: constant), never below 0.
double interpolate_linear(const std::vector<std::pair<double, double>>& pts, double x);

struct CostOptions {
  int64_t layers = 61;          // DeepSeek-V3.2: 61 decoder layers, each with DSA
  double price_per_gpu_hour = 2.0;  // the paper's H800 price
};

// $ per million tokens for a per-token, per-layer time in µs: layers x µs x 1e6 tokens / 1e6 s per µs.
inline double dollars_per_million_tokens(double us_per_token_per_layer, const CostOptions& o) {
  return o.price_per_gpu_hour / 3600.0 * double(o.layers) * us_per_token_per_layer;
}

struct CostRow {
  int64_t position = 0;
  // $ per million tokens; negative where that series was not measured
  double prefill_dense = -1, prefill_dsa = -1, decode_dense = -1, decode_dsa = -1;
};
std::vector<CostRow> cost_table(const CostMeasurements& m, const CostOptions& o, const std::vector<int64_t>& positions);

}  // namespace dsa
