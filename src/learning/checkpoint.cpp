#include "learning/checkpoint.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include "common/error.h"
#include "common/fs_util.h"
#include "storage/adapter_image.h"
#include "storage/atomic_file.h"
#include "storage/crc32.h"

namespace hs {

namespace {

constexpr char kMagic[8] = {'H', 'S', 'C', 'K', 'P', 'T', '0', '1'};

std::string stem(uint64_t seq) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "checkpoint-%020llu", static_cast<unsigned long long>(seq));
  return buf;
}

}  // namespace

void write_checkpoint(const std::string& dir, const TrainerCheckpoint& c) {
  const std::string name = stem(c.seq);
  c.adapter->write(dir + "/" + name + ".hsl");
  const bool scoped = c.scope && !c.scope->empty();
  if (scoped) write_file_atomically(dir + "/" + name + ".scope", scope_to_bytes(*c.scope));

  nlohmann::json meta = {{"seq", c.seq},
                         {"adam_step", c.adam.step},
                         {"values", c.adam.m.size()},
                         {"batches", c.counters.batches},
                         {"events_applied", c.counters.events_applied},
                         {"examples", c.counters.examples},
                         {"gradients", c.counters.gradients},
                         {"steps", c.counters.steps},
                         {"tokens_trained", c.counters.tokens_trained},
                         {"ids", c.ids},
                         {"scope", scoped},
                         {"unscoped", c.unscoped},
                         {"rehearsal", rehearsal_to_json(c.rehearsal)}};
  const std::string text = meta.dump();
  const uint64_t len = text.size();
  const size_t floats = c.adam.m.size() * sizeof(float);
  uint32_t crc = crc32_update(0, kMagic, sizeof(kMagic));
  crc = crc32_update(crc, &len, sizeof(len));
  crc = crc32_update(crc, text.data(), text.size());
  crc = crc32_update(crc, c.adam.m.data(), floats);
  crc = crc32_update(crc, c.adam.v.data(), floats);
  write_file_atomically(dir + "/" + name + ".state",
                        {{kMagic, sizeof(kMagic)}, {&len, sizeof(len)}, {text.data(), text.size()},
                         {c.adam.m.data(), floats}, {c.adam.v.data(), floats}, {&crc, sizeof(crc)}});
  write_file_atomically(dir + "/CHECKPOINT", nlohmann::json{{"seq", c.seq}, {"name", name}}.dump() + "\n");

  // Older checkpoints are no longer reachable from CHECKPOINT.
  for (const std::string& n : list_directory(dir))
    if (n.rfind("checkpoint-", 0) == 0 && n.rfind(name, 0) != 0) ::unlink((dir + "/" + n).c_str());
}

std::optional<TrainerCheckpoint> read_checkpoint(const std::string& dir) {
  const std::string pointer = dir + "/CHECKPOINT";
  struct stat st{};
  if (::stat(pointer.c_str(), &st) != 0) return std::nullopt;
  auto bad = [&](const std::string& why) -> Error {
    return Error(ErrorKind::CorruptFile, "training checkpoint in '" + dir + "' " + why);
  };
  nlohmann::json p;
  try {
    p = nlohmann::json::parse(read_text_file(pointer, ErrorKind::CorruptFile));
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("has an unreadable CHECKPOINT file: ") + e.what());
  }
  if (!p.contains("name") || !p["name"].is_string() || !p.contains("seq")) throw bad("has an incomplete CHECKPOINT file");
  const std::string name = p["name"].get<std::string>();
  if (name.find('/') != std::string::npos) throw bad("names a file outside its folder");

  TrainerCheckpoint c;
  c.adapter = AdapterImage::open(dir + "/" + name + ".hsl");
  const std::string bytes = read_text_file(dir + "/" + name + ".state", ErrorKind::CorruptFile);
  uint64_t len = 0;
  if (bytes.size() < sizeof(kMagic) + sizeof(len) + 4 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    throw bad("has a state file that is not a Hyprstream checkpoint");
  std::memcpy(&len, bytes.data() + sizeof(kMagic), sizeof(len));
  const size_t head = sizeof(kMagic) + sizeof(len);
  if (len > bytes.size() - head - 4) throw bad("has a truncated state file");
  uint32_t stored = 0;
  std::memcpy(&stored, bytes.data() + bytes.size() - 4, 4);
  if (crc32_update(0, bytes.data(), bytes.size() - 4) != stored) throw bad("has a state file failing its CRC");
  try {
    const nlohmann::json meta = nlohmann::json::parse(bytes.substr(head, len));
    c.seq = meta.at("seq").get<uint64_t>();
    c.adam.step = meta.at("adam_step").get<int64_t>();
    const size_t n = meta.at("values").get<size_t>();
    c.counters.batches = meta.at("batches").get<uint64_t>();
    c.counters.events_applied = meta.at("events_applied").get<uint64_t>();
    c.counters.examples = meta.at("examples").get<uint64_t>();
    c.counters.gradients = meta.at("gradients").get<uint64_t>();
    c.counters.steps = meta.at("steps").get<uint64_t>();
    c.counters.tokens_trained = meta.at("tokens_trained").get<uint64_t>();
    for (const auto& id : meta.at("ids")) c.ids.insert(id.get<std::string>());
    // Checkpoints from before scopes existed belong to adapters that learnt without one.
    c.unscoped = meta.value("unscoped", true);
    // Checkpoints from before rehearsal existed start with an empty memory.
    try {
      if (meta.contains("rehearsal")) c.rehearsal = rehearsal_from_json(meta["rehearsal"]);
    } catch (const Error& e) {
      throw bad(std::string("has ") + e.what());
    }
    if (meta.value("scope", false))
      c.scope = std::make_shared<const AdapterScope>(read_scope_file(dir + "/" + name + ".scope"));
    if (bytes.size() != head + len + 2 * n * sizeof(float) + 4) throw bad("has a state file of the wrong size");
    if (n != 0 && static_cast<int64_t>(n) != c.adapter->layout().num_values())
      throw bad("has optimizer state that does not match its adapter");
    c.adam.m.resize(n);
    c.adam.v.resize(n);
    std::memcpy(c.adam.m.data(), bytes.data() + head + len, n * sizeof(float));
    std::memcpy(c.adam.v.data(), bytes.data() + head + len + n * sizeof(float), n * sizeof(float));
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("has unreadable state: ") + e.what());
  }
  if (c.seq != p["seq"].get<uint64_t>()) throw bad("points at a checkpoint of another log position");
  return c;
}

}  // namespace hs
