// dsa cost: serving cost per million tokens against token position, prefill and decode, dense vs
// DSA, for the 61-layer DeepSeek-V3.2 at a price per GPU-hour, from per-layer times measured on
// the GPU (dsa_gpu_bench / dsa_gpu_prefill_bench / dsa_gpu_gemm_bench --cost-csv FILE), as a table
// and a PNG plot like the paper's Figure 3 (gnuplot). docs/cost.md has the model and its limits.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "runtime/cost_model.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {

using dsa::CostRow;

// architecture.md §9.6: the paper's Figure 3 (H800, $2 per GPU-hour), read from the PDF's vector
// data: $ per million tokens at position 0 and 128K. V3.1-Terminus is the dense-MLA model.
struct PaperPoint { const char* series; double at0, at128k; };
constexpr PaperPoint kPaper[] = {{"prefill dense (V3.1-Terminus)", 0.053, 0.67}, {"prefill DSA (V3.2-Exp)", 0.061, 0.19},
                                 {"decode dense (V3.1-Terminus)", 0.07, 2.15},   {"decode DSA (V3.2-Exp)", 0.095, 0.25}};

std::string money(double v) {
  if (v < 0) return "-";
  char b[32];
  std::snprintf(b, sizeof b, "%.4f", v);
  return b;
}

std::string kfmt(int64_t p) {
  return p % 1024 == 0 && p > 0 ? std::to_string(p / 1024) + "K" : std::to_string(p);
}

std::string table_md(const std::vector<CostRow>& rows) {
  std::string s = "| position | prefill dense | prefill DSA | decode dense | decode DSA |\n|---|---|---|---|---|\n";
  for (const CostRow& r : rows)
    s += "| " + kfmt(r.position) + " | " + money(r.prefill_dense) + " | " + money(r.prefill_dsa) + " | " +
         money(r.decode_dense) + " | " + money(r.decode_dsa) + " |\n";
  return s;
}

// Four lines on two panels (prefill, decode), the paper's end points as marks.
void plot_png(const std::vector<CostRow>& rows, const dsa::CostOptions& o, const std::string& png) {
  const std::filesystem::path data = std::filesystem::path(png).replace_extension(".dat");
  {
    std::ofstream f(data);
    DSA_CHECK(f.good(), "--png: cannot write ", data.string());
    f << "# position_k prefill_dense prefill_dsa decode_dense decode_dsa ($ per million tokens; '-' not measured)\n";
    for (const CostRow& r : rows)
      f << double(r.position) / 1024.0 << ' ' << money(r.prefill_dense) << ' ' << money(r.prefill_dsa) << ' '
        << money(r.decode_dense) << ' ' << money(r.decode_dsa) << '\n';
  }
  const std::filesystem::path paper = std::filesystem::path(png).replace_extension(".paper.dat");
  {
    std::ofstream f(paper);
    DSA_CHECK(f.good(), "--png: cannot write ", paper.string());
    f << "# position_k prefill_v31 prefill_v32 decode_v31 decode_v32 (architecture.md 9.6)\n";
    f << "0 " << kPaper[0].at0 << ' ' << kPaper[1].at0 << ' ' << kPaper[2].at0 << ' ' << kPaper[3].at0 << '\n';
    f << "128 " << kPaper[0].at128k << ' ' << kPaper[1].at128k << ' ' << kPaper[2].at128k << ' ' << kPaper[3].at128k << '\n';
  }
  char price[64];
  std::snprintf(price, sizeof price, "%ld layers, $%.2f per GPU-hour", long(o.layers), o.price_per_gpu_hour);
  const std::string d = data.string(), p = paper.string();
  std::string script =
      "set terminal pngcairo size 1200,460 font ',10'\n"
      "set output '" + png + "'\n"
      "set datafile missing '-'\n"
      "set multiplot layout 1,2 title 'Cost per million tokens vs token position (" + price + ")'\n"
      "set xlabel 'token position (K)'\nset ylabel '$ per million tokens'\nset key top left\nset grid\n"
      "set xrange [0:*]\nset yrange [0:*]\n"
      "set title 'Prefilling'\n"
      "plot '" + d + "' u 1:2 w l lw 2 t 'dsa, dense MLA', '" + d + "' u 1:3 w l lw 2 t 'dsa, DSA', '" + p +
      "' u 1:2 w p pt 6 ps 1.5 t 'paper: V3.1-Terminus', '" + p + "' u 1:3 w p pt 4 ps 1.5 t 'paper: V3.2-Exp'\n"
      "set title 'Decoding'\n"
      "plot '" + d + "' u 1:4 w l lw 2 t 'dsa, dense MLA', '" + d + "' u 1:5 w l lw 2 t 'dsa, DSA', '" + p +
      "' u 1:4 w p pt 6 ps 1.5 t 'paper: V3.1-Terminus', '" + p + "' u 1:5 w p pt 4 ps 1.5 t 'paper: V3.2-Exp'\n"
      "unset multiplot\n";
  FILE* g = popen("gnuplot 2>&1", "w");
  DSA_CHECK(g, "--png: cannot start gnuplot (scripts/deps.sh installs gnuplot-nox)");
  std::fwrite(script.data(), 1, script.size(), g);
  const int rc = pclose(g);
  DSA_CHECK(rc == 0, "--png: gnuplot failed (exit status ", rc, "; is gnuplot-nox installed? scripts/deps.sh installs it)");
}

int run(int argc, char** argv) {
  CLI::App app{"Cost per million tokens vs token position (prefill and decode, dense vs DSA) from measured per-layer times"};
  std::string measurements, md, png;
  dsa::CostOptions o;
  int64_t max_position = 131072, step = 4096;
  app.add_option("--measurements", measurements,
                 "CSV of per-layer, per-token times (the GPU benches' --cost-csv; docs/cost.md)")->required();
  app.add_option("--layers", o.layers, "decoder layers (DeepSeek-V3.2: 61)")->capture_default_str();
  app.add_option("--price", o.price_per_gpu_hour, "$ per GPU-hour")->capture_default_str();
  app.add_option("--max-position", max_position, "last token position of the table")->capture_default_str();
  app.add_option("--step", step, "positions of the table: 0, step, 2 step, ...")->capture_default_str();
  app.add_option("--md", md, "also write the table (markdown, with the notes) to this file");
  app.add_option("--png", png, "also plot it (gnuplot; writes FILE and its .dat data next to it)");
  if (int rc = dsa::tools::parse(app, argc, argv); rc >= 0) return rc;
  dsa::tools::check_range<int64_t>("--layers", o.layers, 1, 1024);
  dsa::tools::check_range<double>("--price", o.price_per_gpu_hour, 1e-6, 1e6);
  dsa::tools::check_range<int64_t>("--max-position", max_position, 1, int64_t(1) << 24);
  dsa::tools::check_range<int64_t>("--step", step, 1, max_position);
  const dsa::CostMeasurements m = dsa::CostMeasurements::from_file(measurements);
  std::vector<int64_t> positions;
  for (int64_t p = 0; p <= max_position; p += step) positions.push_back(p);
  if (positions.back() != max_position) positions.push_back(max_position);
  const std::vector<CostRow> rows = dsa::cost_table(m, o, positions);

  std::string out = "Cost per million tokens ($), " + std::to_string(o.layers) + " layers at $" +
                    std::to_string(o.price_per_gpu_hour).substr(0, 5) + " per GPU-hour, from " + measurements + "\n";
  for (const std::string& n : m.notes) out += "  " + n + "\n";
  for (const char* ph : {"prefill", "decode"}) {
    auto r = m.rest_us.find(ph);
    out += std::string("  ") + ph + ": position-independent work " +
           (r == m.rest_us.end() ? std::string("not measured (attention only)")
                                 : std::to_string(r->second).substr(0, 7) + " us per token per layer") + "\n";
  }
  out += "\n" + table_md(rows) + "\nThe paper (architecture.md 9.6; H800 service, $2 per GPU-hour): ";
  for (const PaperPoint& p : kPaper)
    out += std::string(p.series) + " " + money(p.at0) + " at 0, " + money(p.at128k) + " at 128K; ";
  out += "\n";
  std::fputs(out.c_str(), stdout);
  if (!md.empty()) {
    std::ofstream f(md);
    DSA_CHECK(f.good(), "--md: cannot write ", md);
    f << out;
  }
  if (!png.empty()) {
    plot_png(rows, o, png);
    std::printf("plot: %s\n", png.c_str());
  }
  return 0;
}

dsa::tools::Register reg("cost", "cost per million tokens vs position (prefill/decode, dense vs DSA) from GPU timings", run);

}  // namespace
