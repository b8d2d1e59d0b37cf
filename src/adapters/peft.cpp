#include "adapters/peft.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>

#include "adapters/registry.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "model/model.h"
#include "model/safetensors_file.h"
#include "storage/adapter_image.h"
#include "storage/atomic_file.h"

namespace hs {

namespace {

std::string peft_key(const LoraTensorInfo& t) {
  const bool attn = t.module == LoraModule::Q || t.module == LoraModule::K || t.module == LoraModule::V ||
                    t.module == LoraModule::O;
  return "base_model.model.model.layers." + std::to_string(t.layer) + (attn ? ".self_attn." : ".mlp.") +
         lora_module_name(t.module) + (t.is_b ? ".lora_B.weight" : ".lora_A.weight");
}

at::ScalarType safetensors_dtype(const std::string& d, const std::string& name) {
  if (d == "F32") return at::kFloat;
  if (d == "F16") return at::kHalf;
  if (d == "BF16") return at::kBFloat16;
  if (d == "F64") return at::kDouble;
  throw Error(ErrorKind::Unsupported, "PEFT tensor '" + name + "' has dtype " + d + "; expected F32, F16, BF16 or F64");
}

}  // namespace

void export_peft(const AdapterSnapshot& snap, const std::string& folder, const std::string& base_model_name) {
  const TileLayout& layout = snap.image->layout();
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec) throw Error(ErrorKind::Io, "cannot create '" + folder + "': " + ec.message());
  NamedF32Tensors tensors;
  for (const auto& t : layout.tensors) {
    std::vector<float> dense(t.rows * t.cols, 0.0f);
    scatter_tiles(layout, t, [&](int64_t g) { return snap.image->tile(g); }, dense.data());
    tensors.push_back({peft_key(t), {{t.rows, t.cols}, std::move(dense)}});
  }
  // Atomically, so that a failed export (a full disk) leaves no truncated file that PEFT would try to load.
  const std::string header = safetensors_f32_header(tensors);
  std::vector<ByteSpan> pieces{{header.data(), header.size()}};
  for (const auto& [name, t] : tensors) pieces.push_back({t.second.data(), t.second.size() * sizeof(float)});
  write_file_atomically(folder + "/adapter_model.safetensors", pieces);
  nlohmann::json targets = nlohmann::json::array();
  for (LoraModule m : snap.config.targets) targets.push_back(lora_module_name(m));
  const nlohmann::json config = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model_name},
      {"r", snap.config.rank},
      {"lora_alpha", snap.config.alpha},
      {"target_modules", targets},
      {"lora_dropout", 0.0},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"use_rslora", false},
      {"use_dora", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"modules_to_save", nullptr},
      {"revision", nullptr}};
  write_file_atomically(folder + "/adapter_config.json", config.dump(2) + "\n");
}

ImportedAdapter import_peft(const std::string& folder, const Model& base, double sparsity) {
  const ModelConfig& model = base.config;
  const std::string config_path = folder + "/adapter_config.json";
  if (!std::filesystem::exists(config_path))
    throw Error(ErrorKind::NotFound, "'" + folder + "' is not a PEFT adapter folder (no adapter_config.json)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "'" + config_path + "' is not valid JSON: " + e.what());
  }
  auto refuse = [&](const std::string& why) {
    throw Error(ErrorKind::Unsupported, "cannot import '" + folder + "': " + why);
  };
  if (j.value("peft_type", "") != "LORA") refuse("peft_type is not LORA");
  if (j.value("use_dora", false)) refuse("DoRA adapters are not supported");
  if (j.value("fan_in_fan_out", false)) refuse("fan_in_fan_out adapters are not supported");
  if (j.value("bias", "none") != "none") refuse("LoRA biases are not supported");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (j.contains(k) && !j[k].is_null() && !j[k].empty()) refuse(std::string(k) + " is not supported");
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) refuse("layers_to_transform is not supported");
  if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<int64_t>() <= 0) refuse("r is missing or not a positive integer");
  const int64_t r = j["r"].get<int64_t>();
  const double alpha = j.value("lora_alpha", static_cast<double>(r));
  const double scale = j.value("use_rslora", false) ? alpha / std::sqrt(static_cast<double>(r)) : alpha / r;

  ImportedAdapter out;
  out.config.rank = (r + kTileSize - 1) / kTileSize * kTileSize;
  out.config.alpha = scale * static_cast<double>(out.config.rank);
  out.config.sparsity = sparsity;
  out.config.targets.clear();
  const auto& tm = j.value("target_modules", nlohmann::json());
  if (tm.is_string()) {
    refuse("target_modules is a regular expression ('" + tm.get<std::string>() + "'); list the module names");
  } else if (tm.is_array()) {
    for (const auto& t : tm) {
      const std::string name = t.get<std::string>();
      try {
        out.config.targets.push_back(parse_lora_module(name));
      } catch (const Error&) {
        refuse("target module '" + name + "' is not one of the seven decoder projections");
      }
    }
  } else {
    refuse("target_modules is missing");
  }
  validate_adapter_config(out.config);

  const SafetensorsTensors st = read_safetensors(folder + "/adapter_model.safetensors");
  const std::regex key_re(R"(^(?:.*\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$)");
  std::map<std::tuple<int64_t, int, bool>, at::Tensor> found;
  for (const auto& [name, e] : st) {
    std::smatch m;
    if (!std::regex_match(name, m, key_re)) refuse("unexpected tensor '" + name + "'");
    const int64_t layer = std::stoll(m[1].str());
    const LoraModule mod = parse_lora_module(m[2].str());
    if (layer >= model.num_layers) refuse("tensor '" + name + "' is for a layer the model does not have");
    at::Tensor t = at::from_blob(const_cast<uint8_t*>(e.data), e.shape, at::TensorOptions().dtype(safetensors_dtype(e.dtype, name)))
                       .to(at::kFloat);
    found[{layer, static_cast<int>(mod), m[3].str() == "B"}] = t;
  }

  // Dense, rank-padded matrices in storage order.
  std::vector<LoraTensorInfo> tensors = lora_tensors(model, out.config);
  std::vector<at::Tensor> dense;
  for (const auto& t : tensors) {
    auto it = found.find({t.layer, static_cast<int>(t.module), t.is_b});
    const std::string what = "layer " + std::to_string(t.layer) + " " + lora_module_name(t.module) +
                             (t.is_b ? " lora_B" : " lora_A");
    if (it == found.end()) refuse("tensor for " + what + " is missing");
    const at::Tensor& src = it->second;
    const std::vector<int64_t> want = t.is_b ? std::vector<int64_t>{t.rows, r} : std::vector<int64_t>{r, t.cols};
    if (src.sizes().vec() != want)
      refuse(what + " has shape " + std::to_string(src.size(0)) + "x" + std::to_string(src.dim() > 1 ? src.size(1) : 0) +
             ", expected " + std::to_string(want[0]) + "x" + std::to_string(want[1]));
    at::Tensor d = at::zeros({t.rows, t.cols}, at::kFloat);
    (t.is_b ? d.narrow(1, 0, r) : d.narrow(0, 0, r)).copy_(src);
    if (!at::isfinite(d).all().item<bool>()) refuse(what + " has NaN or infinite values");
    const double largest = d.abs().max().item<double>();
    if (largest > kMaxImportedMagnitude)
      refuse(what + " has a value of magnitude " + std::to_string(largest) + "; LoRA weights above " +
             std::to_string(static_cast<int>(kMaxImportedMagnitude)) + " overflow the forward pass");
    dense.push_back(d);
  }
  // Tile norms decide which tiles a sparse import keeps.
  std::vector<at::Tensor> norms;
  for (const auto& d : dense)
    norms.push_back(
        d.view({d.size(0) / kTileSize, kTileSize, d.size(1) / kTileSize, kTileSize}).pow(2).sum({1, 3}).contiguous());
  out.layout = top_tile_layout(model, out.config, [&](size_t ti, int64_t row, int64_t col) {
    return static_cast<double>(norms[ti].data_ptr<float>()[row * norms[ti].size(1) + col]);
  });
  out.values.resize(out.layout.num_values());
  for (size_t ti = 0; ti < tensors.size(); ++ti)
    gather_tiles(out.layout, out.layout.tensors[ti], dense[ti].data_ptr<float>(), out.values.data());
  return out;
}

}  // namespace hs
