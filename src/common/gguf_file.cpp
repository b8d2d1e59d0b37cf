#include "common/gguf_file.h"

#include <cstring>

#include "common/error.h"

namespace hs {

namespace {

enum GgufValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9,
  kU64 = 10, kI64 = 11, kF64 = 12,
};

// Bounds-checked cursor: every read past the end becomes a CorruptFile error naming the file.
class Cursor {
 public:
  Cursor(const MappedFile& f) : file_(f) {}
  template <typename T>
  T read() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, file_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string() {
    uint64_t n = read<uint64_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(file_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  void need(uint64_t n) const {
    if (n > file_.size() || pos_ > file_.size() - n)
      throw Error(ErrorKind::CorruptFile, "GGUF file '" + file_.path() + "' is truncated (header ends early)");
  }
  size_t pos() const { return pos_; }

 private:
  const MappedFile& file_;
  size_t pos_ = 0;
};

GgufValue read_value(Cursor& c, uint32_t type, int depth) {
  GgufValue v;
  switch (type) {
    case kU8: v.kind = GgufValue::Kind::UInt; v.u = c.read<uint8_t>(); break;
    case kU16: v.kind = GgufValue::Kind::UInt; v.u = c.read<uint16_t>(); break;
    case kU32: v.kind = GgufValue::Kind::UInt; v.u = c.read<uint32_t>(); break;
    case kU64: v.kind = GgufValue::Kind::UInt; v.u = c.read<uint64_t>(); break;
    case kI8: v.kind = GgufValue::Kind::Int; v.i = c.read<int8_t>(); break;
    case kI16: v.kind = GgufValue::Kind::Int; v.i = c.read<int16_t>(); break;
    case kI32: v.kind = GgufValue::Kind::Int; v.i = c.read<int32_t>(); break;
    case kI64: v.kind = GgufValue::Kind::Int; v.i = c.read<int64_t>(); break;
    case kF32: v.kind = GgufValue::Kind::Float; v.f = c.read<float>(); break;
    case kF64: v.kind = GgufValue::Kind::Float; v.f = c.read<double>(); break;
    case kBool: v.kind = GgufValue::Kind::Bool; v.b = c.read<uint8_t>() != 0; break;
    case kString: v.kind = GgufValue::Kind::String; v.s = c.read_string(); break;
    case kArray: {
      if (depth > 2) throw Error(ErrorKind::CorruptFile, "GGUF metadata nests arrays too deeply");
      v.kind = GgufValue::Kind::Array;
      uint32_t elem_type = c.read<uint32_t>();
      uint64_t n = c.read<uint64_t>();
      c.need(n);  // every element takes at least one byte, so this bounds a corrupt count
      v.array.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.array.push_back(read_value(c, elem_type, depth + 1));
      break;
    }
    default:
      throw Error(ErrorKind::CorruptFile, "GGUF metadata has an unknown value type " + std::to_string(type));
  }
  return v;
}

int64_t as_int(const GgufValue& v, const std::string& key) {
  switch (v.kind) {
    case GgufValue::Kind::UInt: return static_cast<int64_t>(v.u);
    case GgufValue::Kind::Int: return v.i;
    case GgufValue::Kind::Bool: return v.b;
    default: throw Error(ErrorKind::CorruptFile, "GGUF metadata '" + key + "' is not an integer");
  }
}

}  // namespace

std::string ggml_type_name(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
    case GgmlType::IQ2_XXS: return "IQ2_XXS";
    case GgmlType::IQ2_XS: return "IQ2_XS";
    case GgmlType::IQ3_XXS: return "IQ3_XXS";
    case GgmlType::IQ1_S: return "IQ1_S";
    case GgmlType::IQ4_NL: return "IQ4_NL";
    case GgmlType::IQ3_S: return "IQ3_S";
    case GgmlType::IQ2_S: return "IQ2_S";
    case GgmlType::IQ4_XS: return "IQ4_XS";
    case GgmlType::I8: return "I8";
    case GgmlType::I16: return "I16";
    case GgmlType::I32: return "I32";
    case GgmlType::I64: return "I64";
    case GgmlType::F64: return "F64";
    case GgmlType::IQ1_M: return "IQ1_M";
    case GgmlType::BF16: return "BF16";
    case GgmlType::TQ1_0: return "TQ1_0";
    case GgmlType::TQ2_0: return "TQ2_0";
    case GgmlType::MXFP4: return "MXFP4";
  }
  return "type " + std::to_string(type);
}

bool ggml_block_layout(uint32_t type, int64_t* block_elems, int64_t* block_bytes) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: *block_elems = 1; *block_bytes = 4; return true;
    case GgmlType::F16: *block_elems = 1; *block_bytes = 2; return true;
    case GgmlType::BF16: *block_elems = 1; *block_bytes = 2; return true;
    case GgmlType::Q4_0: *block_elems = 32; *block_bytes = 18; return true;
    case GgmlType::Q4_1: *block_elems = 32; *block_bytes = 20; return true;
    case GgmlType::Q5_0: *block_elems = 32; *block_bytes = 22; return true;
    case GgmlType::Q5_1: *block_elems = 32; *block_bytes = 24; return true;
    case GgmlType::Q8_0: *block_elems = 32; *block_bytes = 34; return true;
    case GgmlType::IQ4_NL: *block_elems = 32; *block_bytes = 18; return true;
    case GgmlType::Q2_K: *block_elems = 256; *block_bytes = 84; return true;
    case GgmlType::Q3_K: *block_elems = 256; *block_bytes = 110; return true;
    case GgmlType::Q4_K: *block_elems = 256; *block_bytes = 144; return true;
    case GgmlType::Q5_K: *block_elems = 256; *block_bytes = 176; return true;
    case GgmlType::Q6_K: *block_elems = 256; *block_bytes = 210; return true;
    default: return false;
  }
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

const GgufValue& GgufFile::at(const std::string& key) const {
  auto it = metadata.find(key);
  if (it == metadata.end())
    throw Error(ErrorKind::CorruptFile, "GGUF file '" + file->path() + "' lacks metadata '" + key + "'");
  return it->second;
}

int64_t GgufFile::get_int(const std::string& key) const { return as_int(at(key), key); }

int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

double GgufFile::get_float(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  const GgufValue& v = at(key);
  if (v.kind == GgufValue::Kind::Float) return v.f;
  return static_cast<double>(as_int(v, key));
}

bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  return as_int(at(key), key) != 0;
}

std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  if (!has(key)) return fallback;
  const GgufValue& v = at(key);
  if (v.kind != GgufValue::Kind::String)
    throw Error(ErrorKind::CorruptFile, "GGUF metadata '" + key + "' is not a string");
  return v.s;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = at(key);
  if (v.kind != GgufValue::Kind::Array)
    throw Error(ErrorKind::CorruptFile, "GGUF metadata '" + key + "' is not an array");
  std::vector<std::string> out;
  out.reserve(v.array.size());
  for (const auto& e : v.array) {
    if (e.kind != GgufValue::Kind::String)
      throw Error(ErrorKind::CorruptFile, "GGUF metadata '" + key + "' is not an array of strings");
    out.push_back(e.s);
  }
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = at(key);
  if (v.kind != GgufValue::Kind::Array)
    throw Error(ErrorKind::CorruptFile, "GGUF metadata '" + key + "' is not an array");
  std::vector<int64_t> out;
  out.reserve(v.array.size());
  for (const auto& e : v.array) out.push_back(as_int(e, key));
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

GgufFile read_gguf(const std::string& path) {
  GgufFile g;
  g.file = MappedFile::open(path);
  const MappedFile& f = *g.file;
  Cursor c(f);
  if (f.size() < 4 || std::memcmp(f.data(), "GGUF", 4) != 0)
    throw Error(ErrorKind::CorruptFile, "'" + path + "' is not a GGUF file (bad magic)");
  c.read<uint32_t>();
  g.version = c.read<uint32_t>();
  if (g.version != 2 && g.version != 3)
    throw Error(ErrorKind::Unsupported,
                "GGUF version " + std::to_string(g.version) + " of '" + path + "' is not supported (2 or 3)");
  uint64_t n_tensors = c.read<uint64_t>();
  uint64_t n_kv = c.read<uint64_t>();
  if (n_tensors > f.size() || n_kv > f.size())
    throw Error(ErrorKind::CorruptFile, "GGUF header of '" + path + "' has impossible counts");
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.read_string();
    uint32_t type = c.read<uint32_t>();
    g.metadata[key] = read_value(c, type, 0);
  }
  g.tensors.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = c.read_string();
    uint32_t n_dims = c.read<uint32_t>();
    if (n_dims == 0 || n_dims > 4)
      throw Error(ErrorKind::CorruptFile, "tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions");
    int64_t numel = 1;  // checked here so that numel() and the byte size below cannot wrap
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = c.read<uint64_t>();
      if (ne == 0 || ne > (1ull << 40) || __builtin_mul_overflow(numel, static_cast<int64_t>(ne), &numel))
        throw Error(ErrorKind::CorruptFile, "tensor '" + t.name + "' has a bad shape");
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    t.type = c.read<uint32_t>();
    t.offset = c.read<uint64_t>();
    g.tensors.push_back(std::move(t));
  }
  int64_t alignment = g.get_int("general.alignment", 32);
  if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
    throw Error(ErrorKind::CorruptFile, "GGUF alignment " + std::to_string(alignment) + " is not a power of two");
  size_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  for (auto& t : g.tensors) {
    int64_t be = 0, bb = 0;
    if (!ggml_block_layout(t.type, &be, &bb)) continue;
    if (t.ne[0] % be != 0)
      throw Error(ErrorKind::CorruptFile, "tensor '" + t.name + "' row is not a whole number of blocks");
    int64_t nbytes = 0;
    if (__builtin_mul_overflow(t.numel() / be, bb, &nbytes))
      throw Error(ErrorKind::CorruptFile, "tensor '" + t.name + "' has a bad shape");
    t.nbytes = static_cast<size_t>(nbytes);
    if (t.offset > f.size() || data_start > f.size() - t.offset || t.nbytes > f.size() - data_start - t.offset)
      throw Error(ErrorKind::CorruptFile, "GGUF file '" + path + "' is truncated: tensor '" + t.name +
                                              "' extends past the end of the file");
    t.data = f.data() + data_start + t.offset;
  }
  return g;
}

}  // namespace hs
