#pragma once
// The adapters of one base model, on disk and in memory: create, list, inspect, delete, publish new versions,
// roll back, and hand out immutable snapshots for generation.
//
// On disk: <root>/<name>/manifest.json and one adapter file per kept version, <root>/<name>/v00000007.hsl.
// In memory: an LRU of verified adapter images within a byte budget ("resident"), and an LRU of dense
// device tensors for the adapters in use ("hot"). A request holds the snapshot it started with, so
// publishing a version never changes a generation that is already running. Changes take an exclusive lock
// on <root>/.lock and re-read the manifest, so processes sharing a folder do not overwrite each other.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "adapters/lru_cache.h"
#include "adapters/manifest.h"
#include "adapters/scope.h"
#include "adapters/tile_layout.h"
#include "common/file_lock.h"
#include "storage/adapter_image.h"

namespace hs {

struct LoraWeights;
struct Model;

struct RegistryOptions {
  std::string root;                      // see default_adapter_root()
  size_t resident_bytes = size_t{1} << 30;  // images (and scopes) kept in memory; the least recently used go first
  size_t hot_adapters = 8;               // adapters kept as dense tensors on the model's device
  uint32_t keep_versions = 5;            // for newly created adapters
  AdapterCodec codec = AdapterCodec::None;
};

// $HYPRSTREAM_ADAPTER_DIR, else $XDG_DATA_HOME/hyprstream/adapters, else ~/.local/share/hyprstream/adapters.
std::string default_adapter_root();

// 1 to 64 characters of [A-Za-z0-9._-], starting with a letter or digit; throws InvalidArgument otherwise.
void validate_adapter_name(const std::string& name);

struct AdapterSnapshot {
  std::string name;
  AdapterVersionInfo version;
  AdapterConfig config;
  std::shared_ptr<const AdapterImage> image;
  std::shared_ptr<const AdapterScope> scope;  // null: the version applies to every request
};

// One adapter folder as `list` finds it: its manifest, or why it cannot be read.
struct AdapterListing {
  std::string name;
  std::optional<AdapterManifest> manifest;
  std::string error;  // set when manifest is empty
};

struct RegistryStats {
  size_t resident_adapters = 0, resident_bytes = 0, hot_adapters = 0, hot_bytes = 0;
  uint64_t disk_loads = 0, resident_hits = 0, hot_builds = 0, hot_hits = 0;
};

class AdapterRegistry {
 public:
  // `model` may be null for managing files only (list, show, rm, rollback, export).
  AdapterRegistry(RegistryOptions options, std::shared_ptr<const Model> model);
  ~AdapterRegistry();

  const std::string& root() const { return options_.root; }
  const std::string& base_fingerprint() const { return fingerprint_; }

  // A new adapter at version 1: a random pattern from config.seed, B zero and A random as in LoRA.
  AdapterManifest create(const std::string& name, const AdapterConfig& config);
  // A new adapter at version 1 with the given pattern and values (imports).
  AdapterManifest create(const std::string& name, const AdapterConfig& config, const TileLayout& layout,
                         const std::vector<float>& values);

  // Writes a new version derived from the current one: same pattern with new values, or a new pattern
  // when `layout` is given. It becomes current; versions beyond `keep` are deleted. `events` is the number of
  // learning events applied since the adapter was created (unset: the parent's). Values must be finite.
  // `scope`, when given and not empty, is stored with the version (<name>/v00000007.scope): requests outside it
  // get the base model. It is publish_in_memory() then write_published(), so the caller must be the only one
  // publishing to `name` (a trainer holds the domain lock). A trainer publishes with Sync::Deferred: its log and
  // checkpoint are the durable record, and a version torn by a power loss fails its checksum and is published
  // again from them (learning/trainer.h).
  AdapterVersionInfo publish(const std::string& name, const std::vector<float>& values,
                             std::optional<uint64_t> events = std::nullopt, const TileLayout* layout = nullptr,
                             std::shared_ptr<const AdapterScope> scope = nullptr, Sync sync = Sync::Durable);

  // A new version decided in memory, its files not written yet.
  struct PendingVersion {
    AdapterManifest manifest;  // with the new version current
    AdapterVersionInfo version;
    std::vector<AdapterVersionInfo> pruned;  // beyond `keep`: their files go once the manifest no longer names them
    std::shared_ptr<const AdapterImage> image;
    std::shared_ptr<const AdapterScope> scope;  // null: none
  };
  // publish() in two steps, so that a trainer's new version is served before its files are written (they
  // follow behind): publish_in_memory() makes it current in this process (acquire() returns it), and
  // write_published() writes its file, scope and the manifest. Nothing else may publish to `name` in between:
  // the caller holds the domain lock (lock_domain) and calls both in turn.
  PendingVersion publish_in_memory(const std::string& name, const std::vector<float>& values,
                                   std::optional<uint64_t> events = std::nullopt, const TileLayout* layout = nullptr,
                                   std::shared_ptr<const AdapterScope> scope = nullptr);
  void write_published(PendingVersion& pending, Sync sync);

  // Rollback and remove change what a trainer works on, so they take the domain lock and throw Busy while a
  // trainer (in this process or another) holds it. A rollback moves the domain's training state aside
  // (<name>/training.rolled-back-N, kept): the next trainer starts from the rolled-back version.
  AdapterManifest rollback(const std::string& name, uint64_t version);
  void remove(const std::string& name);
  // Every adapter folder, the damaged ones with their error, sorted by name.
  std::vector<AdapterListing> list();
  AdapterManifest manifest(const std::string& name);

  // The lock of a domain's writers (<root>/<name>/training.lock), taken without waiting: a trainer holds it
  // for its life. Throws Busy naming `purpose` when another holder has it.
  FileLock lock_domain(const std::string& name, const std::string& purpose);

  // The current version (or `version`), verified; throws NotFound, CorruptFile, or InvalidArgument when the
  // adapter was made for another base model (checked only when the registry has a model).
  std::shared_ptr<const AdapterSnapshot> acquire(const std::string& name, uint64_t version = 0);

  // Dense tensors of a snapshot on the model's device, from the hot set or built now.
  std::shared_ptr<const LoraWeights> weights(const AdapterSnapshot& snapshot);

  RegistryStats stats();

 private:
  std::string dir(const std::string& name) const;
  // The manifest, from the cache when the file has not changed; the file is read without holding mu_.
  AdapterManifest load_manifest(const std::string& name);
  AdapterManifest reload_manifest(const std::string& name);  // from disk, bypassing the cache
  void save_manifest_locked(const AdapterManifest& m, Sync sync = Sync::Durable);
  void check_base(const AdapterManifest& m) const;
  AdapterManifest create_locked(const std::string& name, const AdapterConfig& config, const TileLayout& layout,
                                const std::vector<float>& values);
  PendingVersion next_version(AdapterManifest& m, std::shared_ptr<const AdapterImage> image, uint64_t parent,
                             uint64_t events, std::shared_ptr<const AdapterScope> scope) const;
  // Writes the version's files and the manifest naming it (write_mu_ and the folder lock held), then removes
  // the pruned versions' files.
  void write_version_files(PendingVersion& version, Sync sync);
  void remember_locked(const std::shared_ptr<const AdapterSnapshot>& snap);
  void forget_locked(const std::string& name);

  RegistryOptions options_;
  std::shared_ptr<const Model> model_;
  std::string fingerprint_;

  std::mutex write_mu_;  // serialises changes to the folder
  std::mutex mu_;        // guards everything below; held for lookups only, never for file I/O or device copies
  std::map<std::string, AdapterManifest> manifests_;
  std::map<std::string, std::string> manifest_stamps_;  // inode and mtime of each cached manifest, to notice other writers
  struct Unwritten {
    AdapterManifest manifest;
    std::shared_ptr<const AdapterSnapshot> snapshot;
  };
  std::map<std::string, Unwritten> unwritten_;  // published in memory, files not yet written (publish_in_memory)
  LruCache<std::shared_ptr<const AdapterSnapshot>> resident_;  // key "name@version#crc"
  size_t resident_bytes_ = 0;
  LruCache<std::shared_ptr<const LoraWeights>> hot_;
  RegistryStats counters_;
};

}  // namespace hs
