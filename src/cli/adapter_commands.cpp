// `adapters create|list|show|rm|rollback|export|import`: managing the adapters of a base model.
#include <iostream>
#include <nlohmann/json.hpp>

#include "adapters/peft.h"
#include "api/server/views.h"
#include "adapters/registry.h"
#include "cli/commands.h"
#include "common/error.h"
#include "common/utf8.h"
#include "serving/engine.h"

namespace hs::cli {

std::vector<std::pair<std::string, CLI::App*>> add_adapter_commands(CLI::App& app, ModelFlags& m, AdapterFlags& a,
                                                                    AdapterAdminFlags& f) {
  auto* top = app.add_subcommand("adapters", "Create, inspect, version and exchange sparse LoRA adapters");
  top->require_subcommand(1);
  std::vector<std::pair<std::string, CLI::App*>> out;
  auto add = [&](const std::string& name, const std::string& help, bool needs_model) {
    CLI::App* s = top->add_subcommand(name, help);
    s->add_option("--adapter-dir", a.dir, "Folder of adapters (default: $HYPRSTREAM_ADAPTER_DIR or "
                                          "~/.local/share/hyprstream/adapters)");
    if (needs_model) add_model_flags(s, m);
    out.push_back({name, s});
    return s;
  };
  auto* create = add("create", "Create an adapter for a base model (version 1: B zero, A random)", true);
  create->add_option("name", f.name, "Adapter name")->required();
  create->add_option("--rank", f.rank, "LoRA rank (a multiple of 8)")->capture_default_str();
  create->add_option("--alpha", f.alpha, "LoRA alpha; the update is scaled by alpha/rank")->capture_default_str();
  create->add_option("--sparsity", f.sparsity, "Fraction of A and B entries kept at zero; 0 is a dense LoRA")
      ->capture_default_str();
  create->add_option("--targets", f.targets, "Modules to adapt (default: q k v o gate up down)")->delimiter(',');
  create->add_option("--seed", f.seed, "Seed of the pattern and of A's initial values")->capture_default_str();
  create->add_option("--keep", f.keep, "Versions kept on disk")->capture_default_str();
  create->add_option("--codec", f.codec, "none (memory-mapped in place), zip or blosc")->capture_default_str();

  auto* list = add("list", "List adapters", false);
  list->add_flag("--json", f.json, "Print JSON");
  auto* show = add("show", "Show an adapter's manifest", false);
  show->add_option("name", f.name, "Adapter name")->required();
  show->add_flag("--json", f.json, "Print the manifest as JSON");
  auto* rm = add("rm", "Delete an adapter and all its versions", false);
  rm->add_option("name", f.name, "Adapter name")->required();
  auto* rollback = add("rollback", "Make a kept version current again", false);
  rollback->add_option("name", f.name, "Adapter name")->required();
  rollback->add_option("version", f.version, "Version number")->required()->check(CLI::PositiveNumber);
  auto* exp = add("export", "Write a PEFT folder (adapter_config.json + adapter_model.safetensors)", false);
  exp->add_option("name", f.name, "Adapter name")->required();
  exp->add_option("folder", f.folder, "Output folder")->required();
  exp->add_option("--version", f.version, "A kept version instead of the current one")->check(CLI::PositiveNumber);
  auto* imp = add("import", "Create an adapter from a PEFT LoRA folder", true);
  imp->add_option("name", f.name, "Adapter name")->required();
  imp->add_option("folder", f.folder, "PEFT folder")->required();
  imp->add_option("--sparsity", f.import_sparsity, "Keep the highest-norm 8x8 tiles at this sparsity (default: dense)");
  imp->add_option("--keep", f.keep, "Versions kept on disk")->capture_default_str();
  imp->add_option("--codec", f.codec, "none, zip or blosc")->capture_default_str();
  return out;
}

using api::adapter_json;

int run_adapters(const std::string& action, const ModelFlags& mf, const AdapterFlags& a, const AdapterAdminFlags& f) {
  RegistryOptions opts{a.dir};
  opts.keep_versions = f.keep;
  if (action == "create" || action == "import") {
    opts.codec = parse_adapter_codec(f.codec);
    Engine e = load_engine(EngineOptions{mf.model, mf.dtype, mf.device, true, mf.quantize});
    AdapterRegistry registry(opts, e.model);
    AdapterManifest m;
    if (action == "create") {
      AdapterConfig c;
      c.rank = f.rank;
      c.alpha = f.alpha;
      c.sparsity = f.sparsity;
      c.seed = f.seed;
      if (!f.targets.empty()) {
        c.targets.clear();
        for (const auto& t : f.targets) c.targets.push_back(parse_lora_module(t));
      }
      m = registry.create(f.name, c);
    } else {
      ImportedAdapter imp = import_peft(f.folder, *e.model, f.import_sparsity.value_or(0.0));
      m = registry.create(f.name, imp.config, imp.layout, imp.values);
    }
    std::cout << adapter_json(m).dump() << "\n";
    return 0;
  }
  AdapterRegistry registry(opts, nullptr);
  if (action == "list") {
    // A damaged adapter is listed with its error; the healthy ones are listed as usual.
    auto all = registry.list();
    if (f.json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& a : all)
        j.push_back(a.manifest ? adapter_json(*a.manifest)
                               : nlohmann::json{{"name", a.name}, {"error", utf8_escape_invalid(a.error)}});
      std::cout << j.dump() << "\n";
    } else {
      for (const auto& a : all) {
        if (!a.manifest) {
          std::cout << a.name << "  damaged: " << utf8_escape_invalid(a.error) << "\n";
          continue;
        }
        const AdapterManifest& m = *a.manifest;
        const auto s = adapter_json(m);
        std::cout << m.name << "  v" << m.current << "  rank " << m.config.rank << "  density "
                  << s["density"].get<double>() << "  " << s["bytes"].get<uint64_t>() << " bytes\n";
      }
    }
  } else if (action == "show") {
    AdapterManifest m = registry.manifest(f.name);
    if (f.json) {
      std::cout << manifest_to_json(m);
    } else {
      const nlohmann::json s = adapter_json(m);
      for (auto& [k, v] : s.items())
        if (k != "versions") std::cout << k << ": " << (v.is_string() ? v.get<std::string>() : v.dump()) << "\n";
      for (const auto& v : m.versions)  // the versions, one per line
        std::cout << "  v" << v.version << (v.version == m.current ? " (current)" : "") << "  parent v" << v.parent
                  << "  " << v.created << "  " << v.bytes << " bytes  events " << v.events << "\n";
    }
  } else if (action == "rm") {
    registry.remove(f.name);
  } else if (action == "rollback") {
    AdapterManifest m = registry.rollback(f.name, f.version);
    std::cout << adapter_json(m).dump() << "\n";
  } else if (action == "export") {
    auto snap = registry.acquire(f.name, f.version);
    export_peft(*snap, f.folder, registry.manifest(f.name).base_model);
    std::cout << f.folder << "\n";
  } else {
    throw Error(ErrorKind::Internal, "unknown adapters action " + action);
  }
  return 0;
}

}  // namespace hs::cli
