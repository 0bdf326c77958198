#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <unordered_set>

#include <nlohmann/json.hpp>

namespace dsa {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Headers larger than this are rejected outright (the Hugging Face reader uses the same limit).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::string qname(std::string_view s) {
  constexpr size_t kMax = 120;
  std::string out = "'";
  out.append(s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  out += "'";
  return out;
}

std::string dump_scalar(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 80) + "...";
  return s;
}

// A short, bounded, non-recursive description of a JSON value for error messages.
std::string describe(const json& v) {
  if (v.is_array()) {
    std::string s = "[";
    size_t i = 0;
    for (const auto& e : v) {
      if (i) s += ", ";
      if (i == 8 || s.size() > 80) { s += "..."; break; }
      if (e.is_array()) s += "[...]";
      else if (e.is_object()) s += "{...}";
      else s += dump_scalar(e);
      ++i;
    }
    return s + "]";
  }
  if (v.is_object()) return v.empty() ? "{}" : "an object";
  return dump_scalar(v);
}

std::string supported_dtypes() {
  std::string s;
  for (DType t : {DType::E4M3, DType::BF16, DType::F16, DType::F32, DType::F64, DType::I8, DType::U8,
                  DType::I16, DType::I32, DType::I64, DType::BOOL}) {
    if (!s.empty()) s += ", ";
    s += dtype_name(t);
  }
  return s;
}

// Non-negative JSON integer that fits in uint64_t, or nullopt-like false.
bool as_u64(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  *out = v.get<uint64_t>();
  return true;
}

TensorInfo parse_entry(const std::string& what, const std::string& name, const json& e,
                       uint64_t data_size) {
  auto bad = [&](auto&&... args) {
    fail(what, ": tensor ", qname(name), ": ", std::forward<decltype(args)>(args)...);
  };
  if (!e.is_object()) bad("expected an object {dtype, shape, data_offsets}, found ", describe(e));
  TensorInfo info;
  info.name = name;

  auto dt = e.find("dtype");
  if (dt == e.end()) bad("missing field 'dtype'");
  if (!dt->is_string()) bad("field 'dtype': expected a string, found ", describe(*dt));
  const auto& dname = dt->get_ref<const std::string&>();
  if (!dtype_from_name(dname, &info.dtype))
    bad("unknown dtype ", qname(dname), " (supported: ", supported_dtypes(), ")");

  auto sh = e.find("shape");
  if (sh == e.end()) bad("missing field 'shape'");
  if (!sh->is_array()) bad("field 'shape': expected an array of integers, found ", describe(*sh));
  if (sh->size() > info.shape.d.size())
    bad("shape ", describe(*sh), " has rank ", sh->size(), "; at most ", info.shape.d.size(),
        " dimensions are supported");
  // Products are checked left to right exactly as Shape::numel evaluates them.
  int64_t numel = 1;
  for (size_t i = 0; i < sh->size(); ++i) {
    const json& d = (*sh)[i];
    uint64_t u = 0;
    if (!as_u64(d, &u)) {
      if (d.is_number_integer()) bad("shape ", describe(*sh), ": dimension ", i, " is negative (", d.get<int64_t>(), ")");
      bad("shape ", describe(*sh), ": dimension ", i, ": expected a non-negative integer, found ",
          describe(d));
    }
    if (u > uint64_t(std::numeric_limits<int64_t>::max()))
      bad("shape ", describe(*sh), ": dimension ", i, " (", u, ") is too large");
    info.shape.d[info.shape.n++] = int64_t(u);
    if (__builtin_mul_overflow(numel, int64_t(u), &numel))
      bad("shape ", describe(*sh), ": element count overflows 64 bits");
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(uint64_t(numel), uint64_t(dtype_size(info.dtype)), &nbytes) ||
      nbytes > uint64_t(std::numeric_limits<int64_t>::max()))
    bad("shape ", describe(*sh), ": byte size of ", dname, " data overflows 64 bits");

  auto off = e.find("data_offsets");
  if (off == e.end()) bad("missing field 'data_offsets'");
  if (!off->is_array() || off->size() != 2 || !as_u64((*off)[0], &info.begin) ||
      !as_u64((*off)[1], &info.end))
    bad("field 'data_offsets': expected [begin, end] (two non-negative integers), found ", describe(*off));
  if (info.begin > info.end)
    bad("data_offsets [", info.begin, ", ", info.end, "]: begin > end");
  if (info.end > data_size)
    bad("data_offsets [", info.begin, ", ", info.end, "] run past the end of the data section (",
        data_size, " bytes)");
  if (info.end - info.begin != nbytes)
    bad("data_offsets [", info.begin, ", ", info.end, "] span ", info.end - info.begin,
        " bytes, but ", dname, info.shape.str(), " needs ", nbytes, " bytes");
  return info;
}

}  // namespace

SafetensorsHeader parse_safetensors(const uint8_t* data, size_t size, const std::string& what) {
  if (size < 8)
    fail(what, ": file is ", size, " bytes, too short for the 8-byte header length (not a safetensors file)");
  if (data == nullptr) fail(what, ": no data");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];  // little-endian
  if (n > kMaxHeaderBytes)
    fail(what, ": header length ", n, " is absurdly large (limit ", kMaxHeaderBytes,
         " bytes; file is ", size, " bytes); not a safetensors file?");
  if (n > size - 8)
    fail(what, ": header length ", n, " runs past the end of the file (", size - 8,
         " bytes after the length field)");
  if (n == 0 || data[8] != '{')
    fail(what, ": header does not start with '{' (expected a JSON object, found ",
         n == 0 ? std::string("an empty header") : "byte " + std::to_string(int(data[8])), ")");

  // Parse with a callback that records the order of the top-level keys (tensor names) and
  // catches duplicate keys, which nlohmann::json would otherwise silently overwrite.
  std::vector<std::string> order;
  std::unordered_set<std::string> seen, fields;
  std::string dup_name, dup_field, dup_field_owner, current;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) -> bool {
    if (ev == json::parse_event_t::key) {
      if (depth == 1) {
        current = parsed.get<std::string>();
        if (!seen.insert(current).second) {
          if (dup_name.empty()) dup_name = current;
        } else {
          order.push_back(current);
        }
      } else if (depth == 2) {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!fields.insert(k).second && dup_field.empty()) {
          dup_field = k;
          dup_field_owner = current;
        }
      }
    } else if (ev == json::parse_event_t::object_start && depth == 1) {
      fields.clear();
    }
    return true;
  };
  json j;
  try {
    const char* b = reinterpret_cast<const char*>(data + 8);
    j = json::parse(b, b + n, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    fail(what, ": header is not valid JSON: ", e.what());
  }
  if (!j.is_object()) fail(what, ": header is not a JSON object (found ", j.type_name(), ")");
  if (!dup_name.empty())
    fail(what, ": tensor ", qname(dup_name), " appears more than once in the header");
  if (!dup_field.empty())
    fail(what, ": tensor ", qname(dup_field_owner), ": field ", qname(dup_field),
         " appears more than once");

  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t data_size = size - h.data_start;
  h.tensors.reserve(order.size());
  for (const auto& name : order) {
    const json& e = j.at(name);
    if (name == "__metadata__") {
      if (e.is_null()) continue;
      if (!e.is_object())
        fail(what, ": __metadata__: expected an object of strings, found ", describe(e));
      for (const auto& [k, v] : e.items()) {
        if (!v.is_string())
          fail(what, ": __metadata__ key ", qname(k), ": expected a string value, found ", describe(v));
        h.metadata.emplace(k, v.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(parse_entry(what, name, e, data_size));
  }

  // No two non-empty tensors may share a byte.
  std::vector<const TensorInfo*> by_begin;
  by_begin.reserve(h.tensors.size());
  for (const auto& t : h.tensors)
    if (t.end > t.begin) by_begin.push_back(&t);
  std::sort(by_begin.begin(), by_begin.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_begin.size(); ++i) {
    const TensorInfo* a = by_begin[i - 1];
    const TensorInfo* b = by_begin[i];
    if (b->begin < a->end)
      fail(what, ": tensor ", qname(b->name), " (data_offsets [", b->begin, ", ", b->end,
           "]) overlaps tensor ", qname(a->name), " (data_offsets [", a->begin, ", ", a->end, "])");
  }
  return h;
}

// ---- SafetensorsFile ---------------------------------------------------------------------

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->self_ = f;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open safetensors file: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  size_t size = size_t(st.st_size);
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail(path, ": mmap of ", size, " bytes failed: ", std::strerror(err));
    }
    f->map_ = static_cast<const uint8_t*>(p);
    f->size_ = size;
  }
  ::close(fd);
  static const uint8_t kEmpty[1] = {0};
  f->header_ = parse_safetensors(f->map_ ? f->map_ : kEmpty, f->size_, path);
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) f->index_.emplace(f->header_.tensors[i].name, i);
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

Tensor SafetensorsFile::tensor(const TensorInfo& info) const {
  Tensor t;
  t.dtype = info.dtype;
  t.shape = info.shape;
  t.device = Device::CPU;
  const uint64_t data_size = size_ - header_.data_start;
  DSA_CHECK(info.begin <= info.end && info.end <= data_size &&
                info.end - info.begin == uint64_t(t.numel()) * dtype_size(t.dtype),
            path_, ": tensor ", qname(info.name), ": data_offsets [", info.begin, ", ", info.end,
            "] do not describe ", t.str(), " inside this file");
  const uint8_t* p = map_ + header_.data_start + info.begin;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(t.dtype) == 0) {
    t.data = const_cast<uint8_t*>(p);  // read-only mapping: writes fault
    t.owner = std::shared_ptr<SafetensorsFile>(self_);
    return t;
  }
  // The file places this tensor at a misaligned offset: hand out an aligned copy instead.
  Tensor c = host_tensor(t.dtype, t.shape);
  if (c.nbytes()) std::memcpy(c.data, p, c.nbytes());
  return c;
}

// ---- Checkpoint --------------------------------------------------------------------------

namespace {

// Why `p` cannot be a shard: "" for a regular file (links followed), else what it is instead.
std::string not_a_shard(const fs::path& p) {
  std::error_code ec;
  const fs::file_status st = fs::status(p, ec);
  if (fs::is_regular_file(st)) return "";
  if (!fs::exists(st))
    return fs::is_symlink(fs::symlink_status(p, ec)) ? "is a symbolic link to nothing" : "does not exist";
  if (fs::is_directory(st)) return "is a directory, not a regular file";
  if (fs::is_fifo(st)) return "is a FIFO, not a regular file";
  if (fs::is_character_file(st)) return "is a character device, not a regular file";
  if (fs::is_block_file(st)) return "is a block device, not a regular file";
  if (fs::is_socket(st)) return "is a socket, not a regular file";
  return "is not a regular file";
}

json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(path, ": read error");
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& dir) {
  Checkpoint c;
  c.dir_ = dir;
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail(dir, ": model directory does not exist");
  if (!fs::is_directory(dir, ec)) fail(dir, ": not a directory");
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";

  auto add_file = [&](const fs::path& p) -> size_t {
    c.files_.push_back(SafetensorsFile::open(p.string()));
    return c.files_.size() - 1;
  };

  if (fs::exists(index_path, ec)) {
    const std::string ip = index_path.string();
    json idx = read_json_file(ip);
    if (!idx.is_object()) fail(ip, ": expected a JSON object, found ", describe(idx));
    auto wm = idx.find("weight_map");
    if (wm == idx.end()) fail(ip, ": missing field 'weight_map'");
    if (!wm->is_object()) fail(ip, ": field 'weight_map': expected an object, found ", describe(*wm));
    std::map<std::string, size_t> shard_ids;  // shard file name -> files_ index
    std::map<std::string, std::string> first_tensor;  // shard file name -> a tensor listing it
    for (const auto& [name, v] : wm->items()) {
      if (!v.is_string())
        fail(ip, ": weight_map entry for tensor ", qname(name), ": expected a file name, found ", describe(v));
      const std::string& shard = v.get_ref<const std::string&>();
      fs::path sp(shard);
      bool escapes = shard.empty() || sp.is_absolute();
      for (const auto& part : sp)
        if (part == "..") escapes = true;
      if (escapes)
        fail(ip, ": weight_map entry for tensor ", qname(name), ": shard file name ", qname(shard),
             " must be a relative path inside the model directory");
      first_tensor.emplace(shard, name);
    }
    for (const auto& [shard, tname] : first_tensor) {
      const fs::path sp = fs::path(dir) / shard;
      if (const std::string why = not_a_shard(sp); !why.empty())
        fail(ip, ": tensor ", qname(tname), " is mapped to shard ", qname(shard), ", but ", sp.string(), " ", why);
      shard_ids.emplace(shard, add_file(sp));
    }
    for (const auto& [name, v] : wm->items()) {
      const std::string& shard = v.get_ref<const std::string&>();
      size_t fi = shard_ids.at(shard);
      const SafetensorsFile& f = *c.files_[fi];
      auto it = f.index_.find(name);
      if (it == f.index_.end())
        fail(ip, ": tensor ", qname(name), " is mapped to shard ", qname(shard), ", but ", f.path(),
             " has no tensor of that name");
      c.where_.emplace(name, std::make_pair(fi, it->second));
    }
    // Every tensor in a shard must be listed in the index, and listed for that shard.
    for (size_t fi = 0; fi < c.files_.size(); ++fi) {
      for (const auto& t : c.files_[fi]->header().tensors) {
        auto w = c.where_.find(t.name);
        if (w == c.where_.end())
          fail(ip, ": tensor ", qname(t.name), " is present in ", c.files_[fi]->path(),
               " but not listed in the weight_map");
        if (w->second.first != fi)
          fail(dir, ": tensor ", qname(t.name), " is present in two shards: ",
               c.files_[w->second.first]->path(), " (per the index) and ", c.files_[fi]->path());
      }
    }
    return c;
  }

  std::vector<fs::path> shards;
  for (const auto& de : fs::directory_iterator(dir, ec)) {
    if (de.path().extension() != ".safetensors") continue;
    if (const std::string why = not_a_shard(de.path()); !why.empty()) fail(de.path().string(), ": ", why);
    shards.push_back(de.path());
  }
  if (ec) fail(dir, ": cannot list directory: ", ec.message());
  if (shards.empty())
    fail(dir, ": no model.safetensors.index.json and no *.safetensors files in the directory");
  std::sort(shards.begin(), shards.end());
  for (const auto& sp : shards) {
    size_t fi = add_file(sp);
    const auto& ts = c.files_[fi]->header().tensors;
    for (size_t ti = 0; ti < ts.size(); ++ti) {
      auto [it, fresh] = c.where_.emplace(ts[ti].name, std::make_pair(fi, ti));
      if (!fresh)
        fail(dir, ": tensor ", qname(ts[ti].name), " is present in two shards: ",
             c.files_[it->second.first]->path(), " and ", c.files_[fi]->path());
    }
  }
  return c;
}

bool Checkpoint::has(std::string_view name) const { return where_.find(name) != where_.end(); }

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [k, v] : where_) out.push_back(k);
  return out;
}

const TensorInfo& Checkpoint::info(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, ": missing tensor ", qname(name));
  return files_[it->second.first]->header().tensors[it->second.second];
}

const std::string& Checkpoint::file_of(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, ": missing tensor ", qname(name));
  return files_[it->second.first]->path();
}

Tensor Checkpoint::get(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, ": missing tensor ", qname(name));
  const auto& f = *files_[it->second.first];
  return f.tensor(f.header().tensors[it->second.second]);
}

Tensor Checkpoint::get(std::string_view name, DType dtype, Shape shape) const {
  auto it = where_.find(name);
  if (it == where_.end())
    fail(dir_, ": missing tensor ", qname(name), " (expected ", dtype_name(dtype), shape.str(), ")");
  const auto& f = *files_[it->second.first];
  const TensorInfo& ti = f.header().tensors[it->second.second];
  if (ti.dtype != dtype || !(ti.shape == shape))
    fail(f.path(), ": tensor ", qname(name), ": expected ", dtype_name(dtype), shape.str(), ", found ",
         dtype_name(ti.dtype), ti.shape.str());
  return f.tensor(ti);
}

namespace {

// Index of the first element whose bits say NaN or infinity (all exponent bits set), or n. The
// branch-free OR pass vectorizes; the exact index is looked for only once something is found.
template <typename T, typename Pred>
size_t first_nonfinite(const T* p, size_t n, Pred bad) {
  constexpr size_t kChunk = 1 << 16;
  for (size_t c = 0; c < n; c += kChunk) {
    const size_t e = std::min(n, c + kChunk);
    bool any = false;
    for (size_t i = c; i < e; ++i) any |= bad(p[i]);
    if (any)
      for (size_t i = c; i < e; ++i)
        if (bad(p[i])) return i;
  }
  return n;
}

}  // namespace

void Checkpoint::check_finite(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, ": missing tensor ", qname(name));
  const auto& f = *files_[it->second.first];
  const TensorInfo& ti = f.header().tensors[it->second.second];
  const Tensor t = f.tensor(ti);
  const size_t n = size_t(t.numel());
  size_t at = n;
  bool nan = false;
  switch (t.dtype) {
    case DType::F32: {
      const uint32_t* p = static_cast<const uint32_t*>(t.data);
      at = first_nonfinite(p, n, [](uint32_t v) { return (v & 0x7f800000u) == 0x7f800000u; });
      nan = at < n && (p[at] & 0x007fffffu) != 0;
      break;
    }
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(t.data);
      at = first_nonfinite(p, n, [](uint16_t v) { return (v & 0x7f80u) == 0x7f80u; });
      nan = at < n && (p[at] & 0x007fu) != 0;
      break;
    }
    case DType::F16: {
      const uint16_t* p = static_cast<const uint16_t*>(t.data);
      at = first_nonfinite(p, n, [](uint16_t v) { return (v & 0x7c00u) == 0x7c00u; });
      nan = at < n && (p[at] & 0x03ffu) != 0;
      break;
    }
    case DType::E4M3: {  // e4m3fn has no infinity; S.1111.111 is NaN
      const uint8_t* p = static_cast<const uint8_t*>(t.data);
      at = first_nonfinite(p, n, [](uint8_t v) { return (v & 0x7fu) == 0x7fu; });
      nan = true;
      break;
    }
    default:
      return;
  }
  if (at < n)
    fail(f.path(), ": tensor ", qname(name), " (", dtype_name(ti.dtype), ti.shape.str(), ") holds ",
         nan ? "NaN" : "an infinity", " at element ", at,
         ": the checkpoint is corrupt (--no-check-weights skips this check)");
}

uint64_t Checkpoint::tensor_bytes() const {
  uint64_t b = 0;
  for (const auto& f : files_)
    for (const auto& t : f->header().tensors) b += t.end - t.begin;
  return b;
}

// ---- Writing -----------------------------------------------------------------------------

namespace {

std::string json_string(const std::string& s, const std::string& what) {
  try {
    return json(s).dump();
  } catch (const json::exception& e) {
    fail(what, ": name or metadata ", qname(s), " is not valid UTF-8");
  }
}

void write_all(const std::string& path, const std::string& header,
               const std::vector<NamedTensor>& tensors) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(tmp, ": cannot create: ", std::strerror(errno));
    uint64_t n = header.size();
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(header.data(), std::streamsize(header.size()));
    for (const auto& nt : tensors)
      if (nt.tensor.nbytes()) out.write(static_cast<const char*>(nt.tensor.data), std::streamsize(nt.tensor.nbytes()));
    out.flush();
    if (!out) fail(tmp, ": write failed: ", std::strerror(errno));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail(path, ": cannot rename ", tmp, " into place: ", ec.message());
}

uint64_t check_writable(const std::string& path, const std::vector<NamedTensor>& tensors) {
  std::unordered_set<std::string_view> names;
  uint64_t total = 0;
  for (const auto& nt : tensors) {
    const Tensor& t = nt.tensor;
    DSA_CHECK(nt.name != "__metadata__", path, ": a tensor cannot be named '__metadata__'");
    DSA_CHECK(names.insert(nt.name).second, path, ": tensor ", qname(nt.name), " is written twice");
    DSA_CHECK(t.device == Device::CPU, path, ": tensor ", qname(nt.name), " is not a host tensor");
    for (int i = 0; i < t.shape.n; ++i)
      DSA_CHECK(t.shape[i] >= 0, path, ": tensor ", qname(nt.name), ": negative dimension in ", t.str());
    DSA_CHECK(t.nbytes() == 0 || t.data != nullptr, path, ": tensor ", qname(nt.name), " (", t.str(),
              ") has no data");
    total += t.nbytes();
  }
  return total;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  check_writable(path, tensors);
  std::string h = "{";
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool f2 = true;
    for (const auto& [k, v] : metadata) {
      if (!f2) h += ",";
      f2 = false;
      h += json_string(k, path) + ":" + json_string(v, path);
    }
    h += "}";
    first = false;
  }
  uint64_t off = 0;
  for (const auto& nt : tensors) {
    const Tensor& t = nt.tensor;
    if (!first) h += ",";
    first = false;
    h += json_string(nt.name, path);
    h += ":{\"dtype\":\"";
    h += dtype_name(t.dtype);
    h += "\",\"shape\":[";
    for (int i = 0; i < t.shape.n; ++i) {
      if (i) h += ",";
      h += std::to_string(t.shape[i]);
    }
    h += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + t.nbytes()) + "]}";
    off += t.nbytes();
  }
  h += "}";
  while (h.size() % 8) h += ' ';  // 8 + header is then 8-byte aligned
  write_all(path, h, tensors);
}

void write_sharded_checkpoint(const std::string& dir, const std::vector<NamedTensor>& tensors,
                              size_t max_shard_bytes) {
  DSA_CHECK(max_shard_bytes > 0, dir, ": max_shard_bytes must be positive");
  const uint64_t total = check_writable(dir, tensors);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, ": cannot create directory: ", ec.message());
  // Greedy packing in order; a tensor bigger than the limit gets a shard of its own.
  std::vector<std::vector<NamedTensor>> shards;
  uint64_t cur = 0;
  for (const auto& nt : tensors) {
    uint64_t b = nt.tensor.nbytes();
    if (shards.empty() || (cur > 0 && cur + b > max_shard_bytes)) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(nt);
    cur += b;
  }
  if (shards.empty()) shards.emplace_back();
  json wm = json::object();
  const size_t n = shards.size();
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    write_safetensors((fs::path(dir) / name).string(), shards[i], {{"format", "pt"}});
    for (const auto& nt : shards[i]) wm[nt.name] = name;
  }
  json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", wm}};
  const std::string ip = (fs::path(dir) / "model.safetensors.index.json").string();
  std::ofstream out(ip, std::ios::trunc);
  if (!out) fail(ip, ": cannot create: ", std::strerror(errno));
  out << idx.dump(2) << "\n";
  out.flush();
  if (!out) fail(ip, ": write failed");
}

}  // namespace dsa
