#include "adapters/manifest.h"

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace hs {

const AdapterVersionInfo* AdapterManifest::find(uint64_t version) const {
  for (const auto& v : versions)
    if (v.version == version) return &v;
  return nullptr;
}

std::string manifest_to_json(const AdapterManifest& m) {
  nlohmann::json targets = nlohmann::json::array();
  for (LoraModule t : m.config.targets) targets.push_back(lora_module_name(t));
  nlohmann::json versions = nlohmann::json::array();
  for (const auto& v : m.versions) {
    versions.push_back({{"version", v.version}, {"parent", v.parent}, {"file", v.file}, {"created", v.created},
                        {"events", v.events}, {"bytes", v.bytes}, {"crc32", v.crc32},
                        {"active_values", v.active_values}});
    if (!v.scope_file.empty())
      versions.back()["scope"] = {{"file", v.scope_file}, {"examples", v.scope_examples}};
  }
  nlohmann::json j = {{"format", 1},
                      {"name", m.name},
                      {"base_model", {{"fingerprint", m.base_fingerprint}, {"source", m.base_model}}},
                      {"rank", m.config.rank},
                      {"alpha", m.config.alpha},
                      {"targets", targets},
                      {"sparsity", m.config.sparsity},
                      {"seed", m.config.seed},
                      {"dtype", m.dtype},
                      {"codec", m.codec},
                      {"dense_values", m.dense_values},
                      {"current", m.current},
                      {"keep", m.keep},
                      {"versions", versions}};
  return j.dump(2) + "\n";
}

AdapterManifest manifest_from_json(const std::string& text, const std::string& where) {
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (j.at("format").get<int>() != 1)
      throw Error(ErrorKind::Unsupported, "manifest '" + where + "' has an unknown format version");
    AdapterManifest m;
    m.name = j.at("name").get<std::string>();
    m.base_fingerprint = j.at("base_model").at("fingerprint").get<std::string>();
    m.base_model = j.at("base_model").value("source", "");
    m.config.rank = j.at("rank").get<int64_t>();
    m.config.alpha = j.at("alpha").get<double>();
    m.config.targets.clear();
    for (const auto& t : j.at("targets")) m.config.targets.push_back(parse_lora_module(t.get<std::string>()));
    m.config.sparsity = j.at("sparsity").get<double>();
    m.config.seed = j.at("seed").get<uint64_t>();
    m.dtype = j.at("dtype").get<std::string>();
    m.codec = j.value("codec", "none");
    m.dense_values = j.value("dense_values", uint64_t{0});
    m.current = j.at("current").get<uint64_t>();
    m.keep = j.at("keep").get<uint32_t>();
    for (const auto& v : j.at("versions")) {
      m.versions.push_back({v.at("version").get<uint64_t>(), v.at("parent").get<uint64_t>(),
                            v.at("file").get<std::string>(), v.at("created").get<std::string>(),
                            v.at("events").get<uint64_t>(), v.at("bytes").get<uint64_t>(),
                            v.at("crc32").get<uint32_t>(), v.value("active_values", uint64_t{0})});
      if (v.contains("scope")) {
        m.versions.back().scope_file = v.at("scope").at("file").get<std::string>();
        m.versions.back().scope_examples = v.at("scope").at("examples").get<uint64_t>();
      }
    }
    if (!m.find(m.current)) throw Error(ErrorKind::CorruptFile, "manifest '" + where + "' names a current version it does not list");
    return m;
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "manifest '" + where + "' is not valid: " + e.what());
  }
}

std::string utc_now_iso8601() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace hs
