#include "adapters/scope.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs_util.h"
#include "storage/crc32.h"

namespace hs {

namespace {

constexpr char kMagic[8] = {'H', 'S', 'S', 'C', 'O', 'P', 'E', '2'};

}  // namespace

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t k = 0;
  while (k < n && a[k] == b[k]) ++k;
  return k;
}

void add_scope_example(AdapterScope& scope, const std::vector<int32_t>& tokens, const float* keys, uint32_t first,
                       double radius, ScopeMemory memory) {
  if (!valid_memory(memory))
    throw Error(ErrorKind::InvalidArgument, "a scope memory needs an opening of at least one token and turns after it");
  if (tokens.empty()) return;
  size_t shared = 0;
  const ScopeExample* donor = nullptr;
  for (ScopeExample& e : scope.examples) {
    const size_t k = common_prefix(e.tokens, tokens);
    if (k == tokens.size() && k == e.tokens.size()) {  // taught before
      e.memory = std::move(memory);  // the newest teaching is recalled, or none when it was no conversation
      return;
    }
    if (k > shared) shared = k, donor = &e;
  }
  ScopeExample added{tokens, {}, std::min<uint32_t>(first, static_cast<uint32_t>(tokens.size() - 1)), radius,
                     std::move(memory)};
  if (donor) added.rows.assign(donor->rows.begin(), donor->rows.begin() + static_cast<std::ptrdiff_t>(shared));
  const size_t dim = static_cast<size_t>(scope.dim);
  for (size_t t = shared; t < tokens.size(); ++t) {
    added.rows.push_back(static_cast<uint32_t>(scope.rows()));
    scope.keys.insert(scope.keys.end(), keys + t * dim, keys + (t + 1) * dim);
  }
  scope.examples.push_back(std::move(added));
}

bool valid_memory(const ScopeMemory& m) {
  return m.tokens.empty() ? m.opening == 0 : m.opening >= 1 && m.opening < m.tokens.size();
}

size_t AdapterScope::bytes() const {
  size_t n = keys.size() * sizeof(float);
  for (const ScopeExample& e : examples)
    n += sizeof(e) + (e.tokens.size() + e.memory.tokens.size()) * sizeof(int32_t) + e.rows.size() * sizeof(uint32_t);
  return n;
}

uint32_t shared_opening(const AdapterScope& general, const std::vector<int32_t>& tokens) {
  if (tokens.empty() || general.empty()) return 0;
  size_t shared = tokens.size();
  for (const ScopeExample& e : general.examples) shared = std::min(shared, common_prefix(e.tokens, tokens));
  return static_cast<uint32_t>(std::min(shared, tokens.size() - 1));
}

std::string scope_to_bytes(const AdapterScope& s) {
  nlohmann::json examples = nlohmann::json::array();
  for (const ScopeExample& e : s.examples) {
    if (!std::isfinite(e.radius)) throw Error(ErrorKind::InvalidArgument, "a scope radius is not finite");
    nlohmann::json ex{{"tokens", e.tokens}, {"rows", e.rows}, {"first", e.first}, {"radius", e.radius}};
    if (!e.memory.tokens.empty()) ex["memory"] = e.memory.tokens, ex["memory_opening"] = e.memory.opening;
    examples.push_back(std::move(ex));
  }
  const std::string text =
      nlohmann::json{{"layers", s.layers}, {"dim", s.dim}, {"rows", s.rows()}, {"examples", examples}}.dump();
  const uint64_t len = text.size();
  std::string out(kMagic, sizeof(kMagic));
  out.append(reinterpret_cast<const char*>(&len), sizeof(len));
  out += text;
  out.append(reinterpret_cast<const char*>(s.keys.data()), s.keys.size() * sizeof(float));
  const uint32_t crc = crc32_update(0, out.data(), out.size());
  out.append(reinterpret_cast<const char*>(&crc), sizeof(crc));
  return out;
}

AdapterScope scope_from_bytes(std::string_view bytes, const std::string& where) {
  auto bad = [&](const std::string& why) { return Error(ErrorKind::CorruptFile, "the scope in '" + where + "' " + why); };
  uint64_t len = 0;
  const size_t head = sizeof(kMagic) + sizeof(len);
  if (bytes.size() < head + 4 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    throw bad("is not a Hyprstream adapter scope");
  uint32_t stored = 0;
  std::memcpy(&stored, bytes.data() + bytes.size() - 4, 4);
  if (crc32_update(0, bytes.data(), bytes.size() - 4) != stored) throw bad("fails its CRC");
  std::memcpy(&len, bytes.data() + sizeof(kMagic), sizeof(len));
  if (len > bytes.size() - head - 4) throw bad("is truncated");
  AdapterScope s;
  int64_t rows = 0;
  try {
    const nlohmann::json meta = nlohmann::json::parse(bytes.substr(head, len));
    s.layers = meta.at("layers").get<int64_t>();
    s.dim = meta.at("dim").get<int64_t>();
    rows = meta.at("rows").get<int64_t>();
    for (const auto& e : meta.at("examples")) {
      s.examples.push_back({e.at("tokens").get<std::vector<int32_t>>(), e.at("rows").get<std::vector<uint32_t>>(),
                            e.at("first").get<uint32_t>(), e.at("radius").get<double>(), {}});
      if (e.contains("memory"))
        s.examples.back().memory = {e.at("memory").get<std::vector<int32_t>>(), e.at("memory_opening").get<uint32_t>()};
    }
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("is unreadable: ") + e.what());
  }
  const uint64_t key_bytes = bytes.size() - head - len - 4;
  // Compared by division: a damaged header's sizes must not overflow a product.
  const bool sized = rows == 0 ? key_bytes == 0
                               : key_bytes % static_cast<uint64_t>(rows) == 0 &&
                                     key_bytes / static_cast<uint64_t>(rows) == static_cast<uint64_t>(s.dim) * sizeof(float);
  if (s.layers < 1 || s.dim < 1 || s.dim > (int64_t{1} << 24) || rows < 0 || !sized)
    throw bad("has keys of the wrong size");
  for (const ScopeExample& e : s.examples) {
    if (e.tokens.size() != e.rows.size() || e.tokens.empty() || e.first >= e.tokens.size() ||
        std::any_of(e.rows.begin(), e.rows.end(), [&](uint32_t r) { return static_cast<int64_t>(r) >= rows; }))
      throw bad("has an example whose keys do not match its tokens");
    if (!valid_memory(e.memory)) throw bad("has a memory that is not an opening followed by turns");
  }
  s.keys.resize(static_cast<size_t>(rows * s.dim));
  std::memcpy(s.keys.data(), bytes.data() + head + len, s.keys.size() * sizeof(float));
  return s;
}

AdapterScope read_scope_file(const std::string& path) {
  return scope_from_bytes(read_text_file(path, ErrorKind::CorruptFile), path);
}

}  // namespace hs
