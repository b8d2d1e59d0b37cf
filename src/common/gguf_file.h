#pragma once
// GGUF v2/v3 reader (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): metadata and tensor
// directory are parsed; tensor bytes stay in the memory map.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/mapped_file.h"

namespace hs {

// ggml tensor type ids, as numbered in the GGUF specification.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10, Q3_K = 11,
  Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20,
  IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

std::string ggml_type_name(uint32_t type);
// Elements per block and bytes per block of the types we can dequantize; false for the others.
bool ggml_block_layout(uint32_t type, int64_t* block_elems, int64_t* block_bytes);

struct GgufValue {
  enum class Kind { UInt, Int, Float, Bool, String, Array } kind = Kind::UInt;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<GgufValue> array;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the contiguous dimension
  uint32_t type = 0;
  uint64_t offset = 0;      // from the start of the data section
  const uint8_t* data = nullptr;
  size_t nbytes = 0;        // 0 when the type is not one we can size
  int64_t numel() const;
};

struct GgufFile {
  std::shared_ptr<MappedFile> file;
  uint32_t version = 0;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensorInfo> tensors;

  bool has(const std::string& key) const { return metadata.count(key) != 0; }
  const GgufValue& at(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback = "") const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;
};

// Parses and validates the whole header; every tensor of a known type must lie inside the file.
GgufFile read_gguf(const std::string& path);

}  // namespace hs
