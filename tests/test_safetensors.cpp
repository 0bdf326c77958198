// Safetensors reader/writer and Checkpoint: round trips, dsa-mini, and every malformed-input error.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"

#include "test_util.h"

namespace fs = std::filesystem;
using dsa::DType;
using dsa::Shape;
using dsa::Tensor;

namespace {


uint64_t fresh_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) | rd();
}

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("dsa_io_" + std::string(info->name()) + "_" + std::to_string(::getpid()) + "_" +
            std::to_string(fresh_seed() % 1000000));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // A file: 8-byte little-endian length, the header text, then `data`.
  std::string raw(const std::string& name, const std::string& header, const std::string& data = "",
                  uint64_t len_override = UINT64_MAX) {
    std::string p = path(name);
    std::ofstream out(p, std::ios::binary);
    uint64_t n = len_override == UINT64_MAX ? header.size() : len_override;
    for (int i = 0; i < 8; ++i) out.put(char(n >> (8 * i)));
    out << header << data;
    return p;
  }
  std::string bytes(const std::string& name, const std::string& content) {
    std::string p = path(name);
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  fs::path dir_;
};

Tensor random_tensor(DType t, Shape s, std::mt19937_64& rng) {
  Tensor x = dsa::host_tensor(t, s);
  auto* p = x.ptr<uint8_t>();
  for (size_t i = 0; i < x.nbytes(); ++i) p[i] = uint8_t(rng());
  if (t == DType::BOOL)
    for (size_t i = 0; i < x.nbytes(); ++i) p[i] &= 1;
  return x;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

const DType kAllDtypes[] = {DType::F32, DType::F64, DType::BF16, DType::F16, DType::E4M3, DType::I8,
                            DType::U8,  DType::I16, DType::I32,  DType::I64, DType::BOOL};

}  // namespace

// ---- round trips ---------------------------------------------------------------------------

TEST_F(Safetensors, RoundTripEveryDtype) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<dsa::NamedTensor> ts;
  for (DType t : kAllDtypes) {
    // Odd sizes so the dtypes' offsets are not all naturally aligned.
    Shape s{int64_t(1 + rng() % 5), int64_t(1 + rng() % 7)};
    ts.push_back({"t." + std::string(dsa::dtype_name(t)), random_tensor(t, s, rng)});
  }
  ts.push_back({"scalar", random_tensor(DType::F32, Shape{}, rng)});
  ts.push_back({"empty", random_tensor(DType::BF16, Shape{0, 3}, rng)});
  ts.push_back({"rank4", random_tensor(DType::U8, Shape{2, 3, 1, 2}, rng)});
  const std::string p = path("all.safetensors");
  dsa::write_safetensors(p, ts, {{"format", "pt"}, {"note", "h\u00e9llo \"quoted\""}});

  auto f = dsa::SafetensorsFile::open(p);
  const auto& h = f->header();
  EXPECT_EQ(h.data_start % 8, 0u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.metadata.at("note"), "h\u00e9llo \"quoted\"");
  ASSERT_EQ(h.tensors.size(), ts.size());
  uint64_t off = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& info = h.tensors[i];
    SCOPED_TRACE(ts[i].name);
    EXPECT_EQ(info.name, ts[i].name);  // header order = insertion order
    EXPECT_EQ(info.dtype, ts[i].tensor.dtype);
    EXPECT_TRUE(info.shape == ts[i].tensor.shape) << info.shape.str();
    EXPECT_EQ(info.begin, off);  // contiguous
    off = info.end;
    ASSERT_EQ(f->find(ts[i].name), &info);
    Tensor r = f->tensor(info);
    EXPECT_EQ(r.dtype, ts[i].tensor.dtype);
    EXPECT_TRUE(r.shape == ts[i].tensor.shape);
    ASSERT_EQ(r.nbytes(), ts[i].tensor.nbytes());
    if (r.nbytes()) EXPECT_EQ(std::memcmp(r.data, ts[i].tensor.data, r.nbytes()), 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.data) % dsa::dtype_size(r.dtype), 0u);
  }
  EXPECT_EQ(fs::file_size(p), h.data_start + off);
  EXPECT_EQ(f->find("nope"), nullptr);
}

TEST_F(Safetensors, HeaderIsPaddedWithSpacesAndParsesAsPlainJson) {
  std::mt19937_64 rng(fresh_seed());
  for (int names = 1; names <= 9; ++names) {
    std::vector<dsa::NamedTensor> ts;
    for (int i = 0; i < names; ++i) ts.push_back({std::string(size_t(i + 1), 'a' + char(i)), random_tensor(DType::F32, Shape{3}, rng)});
    const std::string p = path("pad" + std::to_string(names) + ".safetensors");
    dsa::write_safetensors(p, ts);
    std::string s = slurp(p);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(s[size_t(i)]);
    EXPECT_EQ(n % 8, 0u);
    std::string header = s.substr(8, n);
    EXPECT_EQ(header.front(), '{');
    size_t last = header.find_last_not_of(' ');
    EXPECT_EQ(header[last], '}');
    auto j = nlohmann::json::parse(header);
    EXPECT_EQ(j.size(), size_t(names));
    EXPECT_FALSE(j.contains("__metadata__"));
    EXPECT_EQ(j["a"]["dtype"], "F32");
    EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json({0, 12}));
  }
}

TEST_F(Safetensors, TensorKeepsMappingAlive) {
  std::mt19937_64 rng(fresh_seed());
  Tensor src = random_tensor(DType::F32, Shape{64, 3}, rng);
  const std::string p = path("alive.safetensors");
  dsa::write_safetensors(p, {{"w", src}});
  Tensor t;
  {
    auto f = dsa::SafetensorsFile::open(p);
    t = f->tensor(*f->find("w"));
    EXPECT_EQ(f.use_count(), 2);  // the tensor's owner holds the file
  }
  fs::remove(p);  // the mapping outlives the directory entry
  ASSERT_TRUE(t.owner);
  EXPECT_EQ(std::memcmp(t.data, src.data, src.nbytes()), 0);
}

TEST_F(Safetensors, MisalignedTensorIsCopiedAligned) {
  // U8[1] at [0,1) puts the F32 data at an odd address: the loader must hand out an aligned copy.
  std::string data(1 + 8, '\0');
  float v[2] = {1.5f, -2.25f};
  std::memcpy(&data[1], v, 8);
  std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  while ((header.size() + 8) % 8) header += ' ';
  auto f = dsa::SafetensorsFile::open(raw("mis.safetensors", header, data));
  Tensor b = f->tensor(*f->find("b"));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % 4, 0u);
  EXPECT_EQ(b.ptr<float>()[0], 1.5f);
  EXPECT_EQ(b.ptr<float>()[1], -2.25f);
}

TEST_F(Safetensors, AcceptsNullMetadataAndEmptyHeader) {
  auto f = dsa::SafetensorsFile::open(raw("nullmeta.safetensors", R"({"__metadata__":null})"));
  EXPECT_TRUE(f->header().tensors.empty());
  EXPECT_TRUE(f->header().metadata.empty());
  EXPECT_TRUE(dsa::SafetensorsFile::open(raw("empty.safetensors", "{}      "))->header().tensors.empty());
}

TEST_F(Safetensors, ParseBufferDirectly) {
  std::string header = R"({"__metadata__":{"k":"v"},"a":{"dtype":"I32","shape":[1],"data_offsets":[8,12],"x":1}})";
  std::string file;
  for (int i = 0; i < 8; ++i) file += char(uint64_t(header.size()) >> (8 * i));
  file += header + std::string(16, '\0');
  auto h = dsa::parse_safetensors(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "buf");
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].begin, 8u);  // a gap before the tensor and trailing bytes are accepted
  EXPECT_EQ(h.data_start, 8 + header.size());
  EXPECT_EQ(h.metadata.at("k"), "v");
}

TEST_F(Safetensors, WriteRejectsBadInput) {
  Tensor a = dsa::host_tensor(DType::F32, Shape{2});
  EXPECT_DSA_ERROR(dsa::write_safetensors(path("d.safetensors"), {{"x", a}, {"x", a}}), "d.safetensors", "'x'", "twice");
  EXPECT_DSA_ERROR(dsa::write_safetensors(path("m.safetensors"), {{"__metadata__", a}}), "__metadata__");
  Tensor nodata;
  nodata.shape = Shape{4};
  EXPECT_DSA_ERROR(dsa::write_safetensors(path("n.safetensors"), {{"y", nodata}}), "'y'", "no data");
  EXPECT_DSA_ERROR(dsa::write_safetensors(path("no/such/dir/z.safetensors"), {{"z", a}}), "z.safetensors");
}

// ---- sharded checkpoints -------------------------------------------------------------------

TEST_F(Safetensors, ShardedWriteThenCheckpointOpen) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<dsa::NamedTensor> ts;
  uint64_t total = 0;
  for (int i = 0; i < 12; ++i) {
    DType t = kAllDtypes[i % std::size(kAllDtypes)];
    ts.push_back({"model.layers." + std::to_string(i) + ".w", random_tensor(t, Shape{int64_t(8 + i), 16}, rng)});
    total += ts.back().tensor.nbytes();
  }
  ts.push_back({"big", random_tensor(DType::F32, Shape{300}, rng)});  // larger than a shard
  total += 1200;
  const std::string dir = path("ckpt");
  dsa::write_sharded_checkpoint(dir, ts, 1000);

  auto idx = nlohmann::json::parse(slurp(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(idx["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(idx["weight_map"].size(), ts.size());
  std::set<std::string> files;
  for (auto& [k, v] : idx["weight_map"].items()) files.insert(v.get<std::string>());
  EXPECT_GE(files.size(), 3u);
  const std::string n = std::to_string(files.size());
  EXPECT_TRUE(files.count("model-00001-of-0000" + n + ".safetensors")) << *files.begin();

  auto ck = dsa::Checkpoint::open(dir);
  EXPECT_EQ(ck.dir(), dir);
  auto names = ck.names();
  ASSERT_EQ(names.size(), ts.size());
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const auto& nt : ts) {
    SCOPED_TRACE(nt.name);
    ASSERT_TRUE(ck.has(nt.name));
    EXPECT_EQ(fs::path(ck.file_of(nt.name)).filename().string(), idx["weight_map"][nt.name].get<std::string>());
    Tensor r = ck.get(nt.name, nt.tensor.dtype, nt.tensor.shape);
    ASSERT_EQ(r.nbytes(), nt.tensor.nbytes());
    EXPECT_EQ(std::memcmp(r.data, nt.tensor.data, r.nbytes()), 0);
    EXPECT_EQ(ck.info(nt.name).dtype, nt.tensor.dtype);
  }
  EXPECT_FALSE(ck.has("missing"));
  EXPECT_DSA_ERROR(ck.get("missing"), dir, "missing tensor 'missing'");
  EXPECT_DSA_ERROR(ck.info("missing"), dir, "'missing'");
  EXPECT_DSA_ERROR(ck.file_of("missing"), dir, "'missing'");
  EXPECT_DSA_ERROR(ck.get("big", DType::BF16, Shape{300}), ck.file_of("big"), "tensor 'big'",
                   "expected BF16[300], found F32[300]");
  EXPECT_DSA_ERROR(ck.get("big", DType::F32, Shape{30, 10}), "expected F32[30, 10], found F32[300]");
}

TEST_F(Safetensors, CheckpointWithoutIndexUsesAllShardsSorted) {
  std::mt19937_64 rng(fresh_seed());
  const std::string dir = path("noidx");
  fs::create_directories(dir);
  dsa::write_safetensors(dir + "/b.safetensors", {{"y", random_tensor(DType::I64, Shape{2}, rng)}});
  dsa::write_safetensors(dir + "/a.safetensors", {{"x", random_tensor(DType::BF16, Shape{2, 2}, rng)}});
  bytes("noidx/readme.txt", "not a shard");
  auto ck = dsa::Checkpoint::open(dir);
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(fs::path(ck.file_of("x")).filename(), "a.safetensors");
  EXPECT_EQ(ck.get("y").dtype, DType::I64);

  // The same tensor in two shards.
  dsa::write_safetensors(dir + "/c.safetensors", {{"x", random_tensor(DType::BF16, Shape{2, 2}, rng)}});
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(dir), "'x'", "two shards", "a.safetensors", "c.safetensors");
}

TEST_F(Safetensors, CheckpointErrors) {
  std::mt19937_64 rng(fresh_seed());
  Tensor a = random_tensor(DType::F32, Shape{4}, rng);
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(path("nonexistent")), "nonexistent", "does not exist");
  bytes("plainfile", "x");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(path("plainfile")), "plainfile", "not a directory");
  fs::create_directories(path("empty"));
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(path("empty")), "empty", "no model.safetensors.index.json");

  // A broken shard is reported with its own path.
  fs::create_directories(path("broken"));
  bytes("broken/model.safetensors", "tiny");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(path("broken")), "broken/model.safetensors", "too short");

  auto make = [&](const std::string& d, const std::string& index) {
    fs::create_directories(path(d));
    dsa::write_safetensors(path(d + "/s1.safetensors"), {{"a", a}, {"b", a}});
    dsa::write_safetensors(path(d + "/s2.safetensors"), {{"c", a}});
    bytes(d + "/model.safetensors.index.json", index);
    return path(d);
  };
  const std::string good = R"({"metadata":{"total_size":48},"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}})";
  EXPECT_EQ(dsa::Checkpoint::open(make("good", good)).names().size(), 3u);

  // The index lists a tensor its shard does not have.
  std::string d = make("lacks", R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors","zz":"s2.safetensors"}})");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(d), "model.safetensors.index.json", "'zz'", "s2.safetensors", "no tensor");
  // The index names a shard that does not exist.
  d = make("noshard", R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s3.safetensors"}})");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(d), "model.safetensors.index.json", "'c'", "s3.safetensors", "does not exist");
  // A tensor in two shards: the index maps it to one, the other shard has it too.
  d = make("twice", good);
  dsa::write_safetensors(d + "/s2.safetensors", {{"c", a}, {"a", a}});
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(d), "'a'", "two shards", "s1.safetensors", "s2.safetensors");
  // A shard tensor missing from the index.
  d = make("unlisted", R"({"weight_map":{"a":"s1.safetensors","c":"s2.safetensors"}})");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(d), "'b'", "s1.safetensors", "not listed");
  // Index problems.
  d = make("badjson", R"({"weight_map":{"a":)");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(d), "model.safetensors.index.json", "not valid JSON");
  d = make("nowm", R"({"metadata":{}})");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(d), "model.safetensors.index.json", "weight_map");
  d = make("wmtype", R"({"weight_map":["a"]})");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(d), "model.safetensors.index.json", "weight_map", "expected an object");
  d = make("valtype", R"({"weight_map":{"a":1}})");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(d), "model.safetensors.index.json", "'a'", "expected a file name");
  d = make("escape", R"({"weight_map":{"a":"../s1.safetensors"}})");
  EXPECT_DSA_ERROR(dsa::Checkpoint::open(d), "model.safetensors.index.json", "'a'", "inside the model directory");
}

// ---- dsa-mini --------------------------------------------------------------------------------

TEST_F(Safetensors, LoadsDsaMini) {
  const std::string dir = std::string(DSA_SHARED_DIR) + "/models/dsa-mini";
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " not present";
  auto ck = dsa::Checkpoint::open(dir);
  auto names = ck.names();
  EXPECT_EQ(names.size(), 415u);
  const std::string w = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight";
  const auto& info = ck.info(w);
  EXPECT_EQ(info.dtype, DType::E4M3);
  EXPECT_TRUE(info.shape == (Shape{576, 384})) << info.shape.str();
  Tensor t = ck.get(w, DType::E4M3, Shape{576, 384});
  EXPECT_NE(t.data, nullptr);
  Tensor s = ck.get(w + "_scale_inv", DType::F32, Shape{5, 3});
  for (int i = 0; i < 15; ++i) {
    float v = s.ptr<float>()[i];
    EXPECT_TRUE(v > 0 && std::isfinite(v)) << v;
  }
  EXPECT_DSA_ERROR(ck.get(w, DType::BF16, Shape{576, 384}), "model-0000", "'" + w + "'",
                   "expected BF16[576, 384], found F8_E4M3[576, 384]");
  // Every tensor is reachable, aligned, and the index's total_size matches the tensors' bytes.
  uint64_t total = 0;
  for (const auto& n : names) {
    Tensor x = ck.get(n);
    total += x.nbytes();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data) % dsa::dtype_size(x.dtype), 0u) << n;
  }
  auto idx = nlohmann::json::parse(slurp(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(total, idx["metadata"]["total_size"].get<uint64_t>());
  EXPECT_EQ(ck.get("model.embed_tokens.weight").dtype, DType::BF16);
}

// ---- malformed files: each error names the file (and the tensor) ----------------------------

TEST_F(Safetensors, ErrorFileTooShortOrEmpty) {
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(bytes("short.safetensors", "abc")), "short.safetensors", "3 bytes", "too short");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(bytes("zero.safetensors", "")), "zero.safetensors", "0 bytes");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(path("absent.safetensors")), "absent.safetensors", "cannot open");
  fs::create_directories(path("adir.safetensors"));
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(path("adir.safetensors")), "adir.safetensors", "not a regular file");
}

TEST_F(Safetensors, ErrorHeaderLength) {
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("past.safetensors", "{}", "", 1000)), "past.safetensors",
                   "header length 1000", "past the end of the file");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("huge.safetensors", "{}", "", uint64_t(1) << 63)),
                   "huge.safetensors", "absurdly large");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("max.safetensors", "{}", "", UINT64_MAX - 1)), "max.safetensors",
                   "absurdly large");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("empty.safetensors", "")), "empty.safetensors", "empty header");
}

TEST_F(Safetensors, ErrorInvalidJson) {
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("trunc.safetensors", R"({"a":{"dtype":"F32")")),
                   "trunc.safetensors", "not valid JSON");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("garbage.safetensors", "{garbage}")), "garbage.safetensors",
                   "not valid JSON");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("utf8.safetensors", "{\"\xff\xfe\":1}")), "utf8.safetensors",
                   "not valid JSON");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("trail.safetensors", "{} {}")), "trail.safetensors",
                   "not valid JSON");
}

TEST_F(Safetensors, ErrorHeaderNotAnObject) {
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("arr.safetensors", "[1, 2]")), "arr.safetensors", "JSON object");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("ws.safetensors", " {}")), "ws.safetensors", "JSON object");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("entry.safetensors", R"({"w": 5})")), "entry.safetensors",
                   "tensor 'w'", "expected an object", "found 5");
}

TEST_F(Safetensors, ErrorMissingFields) {
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("nd.safetensors", R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "1234")),
                   "nd.safetensors", "tensor 'w'", "missing field 'dtype'");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("ns.safetensors", R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "1234")),
                   "ns.safetensors", "tensor 'w'", "missing field 'shape'");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("no.safetensors", R"({"w":{"dtype":"F32","shape":[1]}})", "1234")),
                   "no.safetensors", "tensor 'w'", "missing field 'data_offsets'");
}

TEST_F(Safetensors, ErrorDtype) {
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("e5.safetensors", R"({"w":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[0,1]}})", "1")),
                   "e5.safetensors", "tensor 'w'", "unknown dtype 'F8_E5M2'", "F8_E4M3");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("dn.safetensors", R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,1]}})", "1")),
                   "dn.safetensors", "tensor 'w'", "'dtype'", "expected a string", "found 7");
}

TEST_F(Safetensors, ErrorShape) {
  auto shaped = [&](const std::string& name, const std::string& shape) {
    return raw(name, R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,4]}})", "1234");
  };
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("neg.safetensors", "[-1]")), "neg.safetensors", "tensor 'w'", "negative");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("frac.safetensors", "[1.5]")), "frac.safetensors", "tensor 'w'",
                   "non-negative integer", "found 1.5");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("str.safetensors", R"(["4"])")), "str.safetensors", "tensor 'w'",
                   "non-negative integer");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("notarr.safetensors", "4")), "notarr.safetensors", "tensor 'w'",
                   "'shape'", "expected an array");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("big.safetensors", "[1e30]")), "big.safetensors", "tensor 'w'",
                   "non-negative integer");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("u64.safetensors", "[18446744073709551615]")), "u64.safetensors",
                   "tensor 'w'", "too large");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("ovf.safetensors", "[4294967296, 4294967296]")), "ovf.safetensors",
                   "tensor 'w'", "overflows");
  // The partial product overflows even though a later 0 makes the total 0.
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("ovf0.safetensors", "[4611686018427387904, 4, 0]")),
                   "ovf0.safetensors", "tensor 'w'", "overflows");
  // Element count fits, byte count does not.
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("ovfb.safetensors", "[4611686018427387904]")), "ovfb.safetensors",
                   "tensor 'w'", "byte size");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(shaped("rank5.safetensors", "[1,1,1,1,1]")), "rank5.safetensors",
                   "tensor 'w'", "rank 5");
}

TEST_F(Safetensors, ErrorDataOffsets) {
  auto off = [&](const std::string& name, const std::string& offsets, const std::string& shape = "[2]") {
    return raw(name, R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}}", "12345678");
  };
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(off("range.safetensors", "[0,16]", "[4]")), "range.safetensors",
                   "tensor 'w'", "[0, 16]", "past the end of the data section (8 bytes)");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(off("rev.safetensors", "[8,0]")), "rev.safetensors", "tensor 'w'",
                   "begin > end");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(off("size.safetensors", "[0,4]")), "size.safetensors", "tensor 'w'",
                   "span 4 bytes", "F32[2] needs 8 bytes");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(off("three.safetensors", "[0,4,8]")), "three.safetensors", "tensor 'w'",
                   "expected [begin, end]");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(off("negoff.safetensors", "[-8,0]")), "negoff.safetensors", "tensor 'w'",
                   "expected [begin, end]");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(off("strs.safetensors", R"(["0","8"])")), "strs.safetensors",
                   "tensor 'w'", "expected [begin, end]");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(off("hugeoff.safetensors", "[18446744073709551608,18446744073709551615]")),
                   "hugeoff.safetensors", "tensor 'w'", "past the end");
}

TEST_F(Safetensors, ErrorOverlap) {
  std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("ovl.safetensors", h, std::string(12, 'x'))), "ovl.safetensors",
                   "tensor 'b'", "overlaps tensor 'a'");
  std::string same = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                     R"("b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})";
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("same.safetensors", same, "abcd")), "same.safetensors",
                   "overlaps", "'a'", "'b'");
  // Empty tensors share no bytes and may sit anywhere.
  std::string empty = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                      R"("e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}})";
  EXPECT_NO_THROW(dsa::SafetensorsFile::open(raw("emptyok.safetensors", empty, "abcd")));
}

TEST_F(Safetensors, ErrorDuplicates) {
  std::string h = R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                  R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("dup.safetensors", h, "ab")), "dup.safetensors", "tensor 'w'",
                   "more than once");
  std::string f = R"({"w":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}})";
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("dupf.safetensors", f, "a")), "dupf.safetensors", "tensor 'w'",
                   "field 'dtype'", "more than once");
}

TEST_F(Safetensors, ErrorMetadata) {
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("meta.safetensors", R"({"__metadata__":{"format":"pt","n":3}})")),
                   "meta.safetensors", "__metadata__", "'n'", "expected a string", "found 3");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("metaarr.safetensors", R"({"__metadata__":["pt"]})")),
                   "metaarr.safetensors", "__metadata__", "expected an object");
  EXPECT_DSA_ERROR(dsa::SafetensorsFile::open(raw("metanest.safetensors", R"({"__metadata__":{"a":{"b":"c"}}})")),
                   "metanest.safetensors", "'a'", "expected a string");
}

TEST_F(Safetensors, ParseNeverReadsPastTheBuffer) {
  // Every prefix of a valid file is either accepted or rejected with an Error; never UB (ASan/fuzz
  // cover the rest).
  std::mt19937_64 rng(fresh_seed());
  const std::string p = path("ok.safetensors");
  dsa::write_safetensors(p, {{"a", random_tensor(DType::BF16, Shape{3, 5}, rng)},
                             {"b", random_tensor(DType::E4M3, Shape{7}, rng)}});
  const std::string s = slurp(p);
  size_t ok = 0;
  for (size_t n = 0; n <= s.size(); ++n) {
    std::vector<uint8_t> buf(s.begin(), s.begin() + std::ptrdiff_t(n));  // exact-size heap copy
    try {
      dsa::parse_safetensors(buf.data(), buf.size(), "prefix");
      ++ok;
    } catch (const dsa::Error& e) {
      EXPECT_NE(std::string(e.what()).find("prefix"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(ok, 1u);  // only the whole file
}
