#include "model/safetensors_file.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "common/fs_util.h"

namespace hs {

using nlohmann::json;

namespace {

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

}  // namespace

SafetensorsTensors read_safetensors(const std::string& path) {
  auto file = MappedFile::open(path);
  const size_t size = file->size();
  if (size < 8) throw Error(ErrorKind::CorruptFile, "'" + path + "' is too short to be a safetensors file");
  uint64_t header_len;
  std::memcpy(&header_len, file->data(), 8);
  if (header_len > size - 8)
    throw Error(ErrorKind::CorruptFile, "'" + path + "' is truncated: its header claims " + std::to_string(header_len) +
                                            " bytes");
  json header;
  try {
    header = json::parse(file->data() + 8, file->data() + 8 + header_len);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "'" + path + "' has a corrupt safetensors header: " + e.what());
  }
  const size_t data_start = 8 + header_len;
  SafetensorsTensors out;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    SafetensorsEntry e;
    try {
      e.dtype = info.at("dtype").get<std::string>();
      e.shape = info.at("shape").get<std::vector<int64_t>>();
      auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1]) throw std::runtime_error("bad data_offsets");
      if (offsets[1] > size - data_start)
        throw Error(ErrorKind::CorruptFile, "'" + path + "' is truncated: tensor '" + name +
                                                "' extends past the end of the file");
      e.data = file->data() + data_start + offsets[0];
      e.nbytes = offsets[1] - offsets[0];
    } catch (const json::exception& ex) {
      throw Error(ErrorKind::CorruptFile, "'" + path + "' tensor '" + name + "' has a malformed entry: " + ex.what());
    }
    size_t numel = 1;
    for (int64_t d : e.shape) numel *= static_cast<size_t>(d);
    size_t es = dtype_size(e.dtype);
    if (es == 0) throw Error(ErrorKind::Unsupported, "tensor '" + name + "' has unsupported dtype " + e.dtype);
    if (numel * es != e.nbytes)
      throw Error(ErrorKind::CorruptFile, "tensor '" + name + "' in '" + path + "' has a size that does not match its shape");
    e.file = file;
    out.emplace(name, std::move(e));
  }
  return out;
}

SafetensorsTensors read_safetensors_folder(const std::string& folder) {
  namespace fs = std::filesystem;
  fs::path single = fs::path(folder) / "model.safetensors";
  fs::path index = fs::path(folder) / "model.safetensors.index.json";
  if (fs::exists(single)) return read_safetensors(single.string());
  if (!fs::exists(index))
    throw Error(ErrorKind::NotFound, "'" + folder + "' has neither model.safetensors nor model.safetensors.index.json");
  json j;
  try {
    j = json::parse(read_text_file(index.string()));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "'" + index.string() + "' is not valid JSON: " + e.what());
  }
  if (!j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(ErrorKind::CorruptFile, "'" + index.string() + "' has no weight_map");
  std::set<std::string> shards;
  for (auto& [name, shard] : j["weight_map"].items()) {
    std::string s = shard.get<std::string>();
    if (s.find('/') != std::string::npos || s.find("..") != std::string::npos)
      throw Error(ErrorKind::CorruptFile, "shard name '" + s + "' in the index is not a plain file name");
    shards.insert(s);
  }
  SafetensorsTensors out;
  for (const auto& s : shards) {
    auto part = read_safetensors((fs::path(folder) / s).string());
    for (auto& kv : part) out.insert(std::move(kv));
  }
  for (auto& [name, shard] : j["weight_map"].items())
    if (!out.count(name))
      throw Error(ErrorKind::CorruptFile, "tensor '" + name + "' listed in the index is missing from its shard");
  return out;
}

std::string safetensors_f32_header(const NamedF32Tensors& tensors) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    uint64_t bytes = t.second.size() * 4;
    header[name] = {{"dtype", "F32"}, {"shape", t.first}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  const uint64_t n = h.size();
  return std::string(reinterpret_cast<const char*>(&n), 8) + h;
}

void write_safetensors_f32(const std::string& path, const NamedF32Tensors& tensors) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(ErrorKind::Io, "cannot write '" + path + "'");
  const std::string header = safetensors_f32_header(tensors);
  out.write(header.data(), header.size());
  for (const auto& [name, t] : tensors) out.write(reinterpret_cast<const char*>(t.second.data()), t.second.size() * 4);
  if (!out) throw Error(ErrorKind::Io, "writing '" + path + "' failed");
}

}  // namespace hs
