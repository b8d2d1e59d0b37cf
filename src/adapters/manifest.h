#pragma once
// The manifest of an adapter (manifest.json in its folder): what it adapts and which versions exist.
// Torch-free.
#include <cstdint>
#include <string>
#include <vector>

#include "adapters/lora_config.h"

namespace hs {

struct AdapterVersionInfo {
  uint64_t version = 0;
  uint64_t parent = 0;   // the version it was derived from; 0 for the first
  std::string file;      // relative to the adapter's folder
  std::string created;   // UTC, ISO 8601
  uint64_t events = 0;   // learning events applied since the adapter was created
  uint64_t bytes = 0;
  uint32_t crc32 = 0;
  uint64_t active_values = 0;
  std::string scope_file;       // the version's relevance scope (adapters/scope.h); empty when it has none
  uint64_t scope_examples = 0;  // taught prompts in it
};

struct AdapterManifest {
  std::string name;
  std::string base_fingerprint;  // adapters/fingerprint.h
  std::string base_model;        // where the base model was loaded from, for people reading the manifest
  AdapterConfig config;
  std::string dtype = "float32";
  std::string codec = "none";
  uint64_t dense_values = 0;     // entries of the dense A and B matrices
  uint64_t current = 0;
  uint32_t keep = 5;             // versions kept on disk
  std::vector<AdapterVersionInfo> versions;  // ascending

  const AdapterVersionInfo* find(uint64_t version) const;
  uint64_t latest() const { return versions.empty() ? 0 : versions.back().version; }
};

std::string manifest_to_json(const AdapterManifest& manifest);
// Throws CorruptFile naming `where` when the text is not a valid manifest.
AdapterManifest manifest_from_json(const std::string& text, const std::string& where);

std::string utc_now_iso8601();

}  // namespace hs
