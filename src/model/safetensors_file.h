#pragma once
// safetensors reader (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length,
// a JSON header, then raw tensor bytes that stay in the memory map.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/mapped_file.h"

namespace hs {

struct SafetensorsEntry {
  std::string dtype;  // "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::shared_ptr<MappedFile> file;  // keeps the map alive for views
};

// Tensors of a single file, or of every shard listed by a model.safetensors.index.json.
using SafetensorsTensors = std::map<std::string, SafetensorsEntry>;

SafetensorsTensors read_safetensors(const std::string& path);
SafetensorsTensors read_safetensors_folder(const std::string& folder);

// Named float32 tensors: (name, (shape, values)).
using NamedF32Tensors = std::vector<std::pair<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>>;

// The start of an F32 safetensors file holding `tensors`: the 8-byte header length and the JSON header. The
// tensors' values follow it in the order given.
std::string safetensors_f32_header(const NamedF32Tensors& tensors);

// Writes float32 tensors; used by tools that hand results to Python (e.g. tests' logit dumps). Not atomic;
// throws Io when the file cannot be written.
void write_safetensors_f32(const std::string& path, const NamedF32Tensors& tensors);

}  // namespace hs
