#pragma once
// Loading models from Hugging Face folders (config.json + safetensors) and GGUF files.
#include <cstdint>
#include <memory>
#include <string>

namespace hs {

struct GgufFile;
struct Model;
struct ModelConfig;

struct LoadOptions {
  std::string dtype = "auto";   // "auto" (float32 on cpu, bfloat16 on cuda), "float32", "bfloat16"
  std::string device = "cpu";   // "cpu", "cuda", "cuda:N"
  // "none", "int8" or "int4" (model/int4_weights.h): weight-only quantized projections (CPU), for faster
  // decoding; "auto": int4 for a GGUF on the CPU whose projections are 4-bit (load.cpp: resolve_auto_quantize).
  std::string quantize = "none";
};

// path is a Hugging Face model folder or a .gguf file.
std::shared_ptr<Model> load_model(const std::string& path, const LoadOptions& options);

// From an already parsed GGUF file, so that its tokenizer can be read from the same parse.
std::shared_ptr<Model> load_model(const GgufFile& gguf, const LoadOptions& options);

// A file with the .gguf extension or the GGUF magic.
bool is_gguf_path(const std::string& path);

// A model of the given shape with random weights (N(0, 0.02), seeded), for benchmarks.
std::shared_ptr<Model> make_random_model(const ModelConfig& config, const LoadOptions& options, uint64_t seed);

}  // namespace hs
