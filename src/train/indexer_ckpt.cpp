#include "train/indexer_ckpt.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/random_model.h"

namespace dsa::train {

namespace fs = std::filesystem;

IndexerShape indexer_shape(const ModelConfig& cfg) {
  return IndexerShape{cfg.hidden_size, cfg.q_lora_rank, cfg.index_n_heads, cfg.index_head_dim};
}

std::string indexer_prefix(int64_t l) { return "model.layers." + std::to_string(l) + ".self_attn.indexer"; }

namespace {

std::vector<float> to_f32(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i)
    v[size_t(i)] = t.dtype == DType::F32 ? t.ptr<float>()[i] : bf16_to_f32(t.ptr<uint16_t>()[i]);
  DSA_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16, "indexer tensor of dtype ", dtype_name(t.dtype));
  return v;
}

std::vector<float> dequant(const Checkpoint& ck, const std::string& name, int64_t n, int64_t k) {
  const Tensor w = ck.get(name + ".weight", DType::E4M3, {n, k});
  const int64_t KB = (k + 127) / 128;
  const Tensor s = ck.get(name + ".weight_scale_inv", DType::F32, {(n + 127) / 128, KB});
  std::vector<float> v(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j)
      v[size_t(i * k + j)] = e4m3_to_f32(w.ptr<uint8_t>()[i * k + j]) * s.ptr<float>()[(i / 128) * KB + j / 128];
  return v;
}

Tensor encode_plain(const std::vector<float>& v, Shape shape, DType dt) {
  Tensor t = host_tensor(dt, shape);
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::F32) t.ptr<float>()[i] = v[i];
    else t.ptr<uint16_t>()[i] = f32_to_bf16(v[i]);
  }
  return t;
}

void encode_fp8(std::vector<NamedTensor>& out, const std::string& name, const std::vector<float>& v, int64_t n, int64_t k) {
  Tensor q = host_tensor(DType::E4M3, {n, k}), s = host_tensor(DType::F32, {(n + 127) / 128, (k + 127) / 128});
  quantize_fp8_blocks(v.data(), n, k, q.ptr<uint8_t>(), s.ptr<float>());
  out.push_back({name + ".weight", q});
  out.push_back({name + ".weight_scale_inv", s});
}

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  DSA_CHECK(f.good(), p, ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file_atomic(const std::string& p, const std::string& bytes) {
  const std::string tmp = p + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    DSA_CHECK(f.good(), tmp, ": cannot write");
    f.write(bytes.data(), std::streamsize(bytes.size()));
    DSA_CHECK(f.good(), tmp, ": write failed");
  }
  fs::rename(tmp, p);  // a reader that mapped the old file keeps it
}

}  // namespace

IndexerParams<float> read_indexer(const Checkpoint& ck, const ModelConfig& cfg, int64_t l) {
  const IndexerShape s = indexer_shape(cfg);
  const std::string p = indexer_prefix(l);
  IndexerParams<float> r;
  r.wq = dequant(ck, p + ".wq_b", s.Hi * s.Di, s.QL);
  r.wk = dequant(ck, p + ".wk", s.Di, s.D);
  r.ln_w = to_f32(ck.get(p + ".k_norm.weight"));
  r.ln_b = to_f32(ck.get(p + ".k_norm.bias"));
  r.wp = to_f32(ck.get(p + ".weights_proj.weight"));
  DSA_CHECK(int64_t(r.ln_w.size()) == s.Di && int64_t(r.ln_b.size()) == s.Di && int64_t(r.wp.size()) == s.n_wp(),
            ck.dir(), ": indexer tensors of layer ", l, " have unexpected shapes");
  return r;
}

IndexerParams<float> random_indexer(const IndexerShape& s, uint64_t seed, int64_t l, double std) {
  IndexerParams<float> r;
  r.resize(s);
  int part = 0;
  for (std::vector<float>* v : {&r.wq, &r.wk, &r.wp}) {
    std::mt19937_64 g(seed * 0x9E3779B97F4A7C15ull + uint64_t(l) * 1000003ull + uint64_t(part++));
    std::normal_distribution<float> d(0.f, float(std));
    for (auto& x : *v) x = d(g);
  }
  std::fill(r.ln_w.begin(), r.ln_w.end(), 1.0f);
  std::fill(r.ln_b.begin(), r.ln_b.end(), 0.0f);
  return r;
}

std::vector<NamedTensor> encode_indexer(const IndexerParams<float>& p, const IndexerShape& s, const ModelConfig& cfg,
                                        int64_t l, const Checkpoint* ck) {
  DSA_CHECK(cfg.weight_block_n == 128 && cfg.weight_block_k == 128, "FP8 blocks must be 128x128");
  const std::string px = indexer_prefix(l);
  auto dt = [&](const std::string& n) { return ck ? ck->info(n).dtype : DType::BF16; };
  std::vector<NamedTensor> out;
  encode_fp8(out, px + ".wq_b", p.wq, s.Hi * s.Di, s.QL);
  encode_fp8(out, px + ".wk", p.wk, s.Di, s.D);
  out.push_back({px + ".k_norm.weight", encode_plain(p.ln_w, {s.Di}, dt(px + ".k_norm.weight"))});
  out.push_back({px + ".k_norm.bias", encode_plain(p.ln_b, {s.Di}, dt(px + ".k_norm.bias"))});
  out.push_back({px + ".weights_proj.weight", encode_plain(p.wp, {s.Hi, s.D}, dt(px + ".weights_proj.weight"))});
  return out;
}

void copy_model_dir(const std::string& in, const std::string& out) {
  DSA_CHECK(fs::weakly_canonical(in) != fs::weakly_canonical(out), "--out must differ from --model");
  fs::create_directories(out);
  for (const auto& e : fs::directory_iterator(in))
    if (e.is_regular_file())
      fs::copy_file(e.path(), fs::path(out) / e.path().filename(), fs::copy_options::overwrite_existing);
}

void patch_checkpoint(const std::string& dir, const std::vector<NamedTensor>& tensors) {
  std::map<std::string, std::vector<const NamedTensor*>> by_file;
  {
    const Checkpoint ck = Checkpoint::open(dir);
    for (const auto& t : tensors) by_file[ck.file_of(t.name)].push_back(&t);
  }
  for (const auto& [path, ts] : by_file) {
    std::string bytes = read_file(path);
    const SafetensorsHeader h = parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
    for (const NamedTensor* t : ts) {
      const TensorInfo* info = nullptr;
      for (const auto& i : h.tensors)
        if (i.name == t->name) info = &i;
      DSA_CHECK(info, path, ": no tensor ", t->name);
      DSA_CHECK(info->dtype == t->tensor.dtype && info->shape == t->tensor.shape, path, ": tensor ", t->name,
                " is ", dtype_name(info->dtype), info->shape.str(), ", the new one ", t->tensor.str());
      std::memcpy(bytes.data() + h.data_start + info->begin, t->tensor.data, t->tensor.nbytes());
    }
    write_file_atomic(path, bytes);
  }
}

ModelConfig add_indexer_to_dir(const std::string& dir, int64_t n_heads, int64_t topk, uint64_t seed, double std) {
  const std::string cp = (fs::path(dir) / "config.json").string();
  nlohmann::json j = nlohmann::json::parse(read_file(cp));
  {
    const Checkpoint ck = Checkpoint::open(dir);
    DSA_CHECK(!ck.has(indexer_prefix(0) + ".wq_b.weight"), dir, ": the checkpoint already has an indexer (drop --add-indexer)");
  }
  j["index_n_heads"] = n_heads;
  j["index_head_dim"] = 128;
  j["index_topk"] = topk;
  j["model_type"] = "deepseek_v32";
  j["architectures"] = {"DeepseekV32ForCausalLM"};
  const ModelConfig cfg = ModelConfig::from_json(j, cp);
  const IndexerShape s = indexer_shape(cfg);
  std::vector<NamedTensor> ts;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (auto& t : encode_indexer(random_indexer(s, seed, l, std), s, cfg, l, nullptr)) ts.push_back(std::move(t));
  const std::string shard = "model-indexer.safetensors";
  write_safetensors((fs::path(dir) / shard).string(), ts, {{"format", "pt"}});
  const fs::path ip = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(ip)) {
    nlohmann::json idx = nlohmann::json::parse(read_file(ip.string()));
    uint64_t add = 0;
    for (const auto& t : ts) {
      idx["weight_map"][t.name] = shard;
      add += t.tensor.nbytes();
    }
    if (idx.contains("metadata") && idx["metadata"].contains("total_size"))
      idx["metadata"]["total_size"] = idx["metadata"]["total_size"].get<uint64_t>() + add;
    write_file_atomic(ip.string(), idx.dump(2) + "\n");
  }
  write_file_atomic(cp, j.dump(2) + "\n");
  return cfg;
}

}  // namespace dsa::train
