#include "adapters/registry.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <filesystem>

#include "adapters/fingerprint.h"
#include "adapters/lora_weights.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "model/model.h"
#include "storage/atomic_file.h"

namespace hs {

namespace fs = std::filesystem;

std::string default_adapter_root() {
  if (const char* d = std::getenv("HYPRSTREAM_ADAPTER_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x) return std::string(x) + "/hyprstream/adapters";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.local/share/hyprstream/adapters";
}

void validate_adapter_name(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 64 && std::isalnum(static_cast<unsigned char>(name[0]));
  for (char c : name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  if (!ok)
    throw Error(ErrorKind::InvalidArgument, "invalid adapter name '" + name +
                                                "': use 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                                                "letter or digit");
}

namespace {

// What a resident snapshot holds in memory, counted against RegistryOptions::resident_bytes.
size_t snapshot_bytes(const AdapterSnapshot& snap) {
  return snap.image->image_bytes() + (snap.scope ? snap.scope->bytes() : 0);
}

std::string version_file(uint64_t version) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "v%08llu.hsl", static_cast<unsigned long long>(version));
  return buf;
}

std::string scope_file(uint64_t version) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "v%08llu.scope", static_cast<unsigned long long>(version));
  return buf;
}

// Caches are keyed by name, version and CRC, so a deleted and re-created adapter never meets the old one's
// cached data.
std::string key(const std::string& name, const AdapterVersionInfo& v) {
  return name + "@" + std::to_string(v.version) + "#" + std::to_string(v.crc32);
}

// Identifies one version of a file: manifests are replaced by rename, which always gives a new inode, and the
// modification time covers anything else. Empty when the file does not exist.
std::string file_stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "";
  return std::to_string(st.st_ino) + ":" + std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
}

// An exclusive lock on <root>/.lock for the duration of a change, so that two processes (a server and the
// CLI, say) never interleave their writes to one folder.
FileLock lock_folder(const std::string& root) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw Error(ErrorKind::Io, "cannot create '" + root + "': " + ec.message());
  return FileLock(root + "/.lock", FileLock::Mode::Wait);
}

}  // namespace

AdapterRegistry::AdapterRegistry(RegistryOptions options, std::shared_ptr<const Model> model)
    : options_(std::move(options)), model_(std::move(model)) {
  if (options_.root.empty()) options_.root = default_adapter_root();
  if (options_.keep_versions == 0) throw Error(ErrorKind::InvalidArgument, "keep_versions must be at least 1");
  if (model_) fingerprint_ = model_fingerprint(*model_);
}

AdapterRegistry::~AdapterRegistry() = default;

std::string AdapterRegistry::dir(const std::string& name) const {
  validate_adapter_name(name);
  return options_.root + "/" + name;
}

AdapterManifest AdapterRegistry::load_manifest(const std::string& name) {
  const std::string path = dir(name) + "/manifest.json";
  const std::string stamp = file_stamp(path);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stamp.empty()) {
      manifests_.erase(name);
      throw Error(ErrorKind::NotFound, "no adapter named '" + name + "' in " + options_.root);
    }
    // A version published in memory is newer than the file until write_published() replaces it.
    if (auto u = unwritten_.find(name); u != unwritten_.end()) return u->second.manifest;
    // Re-read when another process has replaced the manifest (publish, rollback) since it was cached.
    if (auto it = manifests_.find(name); it != manifests_.end() && manifest_stamps_[name] == stamp) return it->second;
  }
  AdapterManifest m = manifest_from_json(read_text_file(path, ErrorKind::CorruptFile), path);
  auto bad = [&](const std::string& why) { throw Error(ErrorKind::CorruptFile, "manifest '" + path + "' " + why); };
  if (m.name != name) bad("names adapter '" + m.name + "'");
  if (m.keep == 0) bad("keeps no versions");
  try {
    validate_adapter_config(m.config);
  } catch (const Error& e) {
    bad(std::string("has an invalid configuration: ") + e.what());
  }
  for (size_t i = 0; i < m.versions.size(); ++i) {
    if (i > 0 && m.versions[i].version <= m.versions[i - 1].version) bad("lists versions out of order");
    if (m.versions[i].file != version_file(m.versions[i].version)) bad("names an unexpected file");
    if (!m.versions[i].scope_file.empty() && m.versions[i].scope_file != scope_file(m.versions[i].version))
      bad("names an unexpected scope file");
  }
  if (!m.find(m.current)) bad("names a current version it does not list");
  std::lock_guard<std::mutex> lock(mu_);
  if (auto u = unwritten_.find(name); u != unwritten_.end()) return u->second.manifest;  // published meanwhile
  manifests_[name] = m;
  manifest_stamps_[name] = stamp;
  return m;
}

AdapterManifest AdapterRegistry::reload_manifest(const std::string& name) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    manifests_.erase(name);  // another process may have changed it
  }
  return load_manifest(name);
}

void AdapterRegistry::save_manifest_locked(const AdapterManifest& m, Sync sync) {
  const std::string path = dir(m.name) + "/manifest.json";
  write_file_atomically(path, manifest_to_json(m), sync);
  std::lock_guard<std::mutex> lock(mu_);
  manifests_[m.name] = m;
  manifest_stamps_[m.name] = file_stamp(path);
}

void AdapterRegistry::check_base(const AdapterManifest& m) const {
  if (!model_) return;  // managing files without a model: nothing to compare against
  if (m.base_fingerprint != fingerprint_)
    throw Error(ErrorKind::InvalidArgument, "adapter '" + m.name + "' was made for base model " + m.base_fingerprint +
                                                " (" + m.base_model + "), not for the loaded model " + fingerprint_ +
                                                " (" + model_->source + ")");
}

// The next version of `m` (it becomes current, and versions beyond `keep` leave the list), decided in memory:
// write_version_files() writes what it names.
AdapterRegistry::PendingVersion AdapterRegistry::next_version(AdapterManifest& m,
                                                              std::shared_ptr<const AdapterImage> image,
                                                              uint64_t parent, uint64_t events,
                                                              std::shared_ptr<const AdapterScope> scope) const {
  PendingVersion c;
  AdapterVersionInfo& v = c.version;
  v.version = m.latest() + 1;
  v.parent = parent;
  v.file = version_file(v.version);
  v.created = utc_now_iso8601();
  v.events = events;
  v.active_values = static_cast<uint64_t>(image->layout().num_values());
  v.bytes = image->image_bytes();  // the file's size once written (smaller with a codec)
  v.crc32 = image->crc32();
  if (scope && scope->empty()) scope.reset();
  if (scope) {
    v.scope_file = scope_file(v.version);
    v.scope_examples = scope->examples.size();
  }
  m.versions.push_back(v);
  m.current = v.version;
  // Keep the newest `keep` versions, and the current one whatever its age.
  while (m.versions.size() > m.keep) {
    auto victim = m.versions.begin();
    if (victim->version == m.current) ++victim;
    c.pruned.push_back(*victim);
    m.versions.erase(victim);
  }
  c.manifest = m;
  c.image = std::move(image);
  c.scope = std::move(scope);
  return c;
}

void AdapterRegistry::write_version_files(PendingVersion& c, Sync sync) {
  AdapterVersionInfo& v = c.version;
  const std::string d = dir(c.manifest.name);
  c.image->write(d + "/" + v.file, parse_adapter_codec(c.manifest.codec), sync);
  v.bytes = fs::file_size(d + "/" + v.file);
  c.manifest.versions.back().bytes = v.bytes;  // the newest: versions ascend
  // Before the manifest names the version: a reader never finds a version without its scope.
  if (c.scope) write_file_atomically(d + "/" + v.scope_file, scope_to_bytes(*c.scope), sync);
  save_manifest_locked(c.manifest, sync);
  for (const AdapterVersionInfo& old : c.pruned) {
    fs::remove(d + "/" + old.file);
    if (!old.scope_file.empty()) fs::remove(d + "/" + old.scope_file);
  }
}

AdapterManifest AdapterRegistry::create(const std::string& name, const AdapterConfig& config) {
  if (!model_) throw Error(ErrorKind::Internal, "creating an adapter needs the base model loaded");
  TileLayout layout = random_tile_layout(model_->config, config);
  return create(name, config, layout, initial_lora_values(layout, config.seed));
}

AdapterManifest AdapterRegistry::create(const std::string& name, const AdapterConfig& config,
                                        const TileLayout& layout, const std::vector<float>& values) {
  std::lock_guard<std::mutex> wlock(write_mu_);
  FileLock folder = lock_folder(options_.root);
  return create_locked(name, config, layout, values);
}

AdapterManifest AdapterRegistry::create_locked(const std::string& name, const AdapterConfig& config,
                                               const TileLayout& layout, const std::vector<float>& values) {
  if (!model_) throw Error(ErrorKind::Internal, "creating an adapter needs the base model loaded");
  validate_adapter_config(config);
  const std::string d = dir(name);
  if (fs::exists(d + "/manifest.json"))
    throw Error(ErrorKind::AlreadyExists, "adapter '" + name + "' already exists in " + options_.root);
  if (static_cast<int64_t>(values.size()) != layout.num_values())
    throw Error(ErrorKind::Internal, "adapter values do not match the pattern");
  auto image = AdapterImage::build(layout, values.data());
  // mkdir, not create_directories: whatever already has this name (a user's files, an adapter that lost its
  // manifest, a create cut short) is left exactly as it is.
  if (::mkdir(d.c_str(), 0755) != 0) {
    if (errno == EEXIST)
      throw Error(ErrorKind::AlreadyExists, "'" + d + "' already exists but holds no adapter manifest; nothing "
                                              "in it was changed: move it away or choose another name");
    throw Error(ErrorKind::Io, "cannot create '" + d + "': " + std::strerror(errno));
  }
  AdapterManifest m;
  m.name = name;
  m.base_fingerprint = fingerprint_;
  m.base_model = model_->source;
  m.config = config;
  m.codec = adapter_codec_name(options_.codec);
  m.dense_values = static_cast<uint64_t>(layout.dense_values());
  m.keep = options_.keep_versions;
  try {
    PendingVersion change = next_version(m, std::move(image), 0, 0, nullptr);
    write_version_files(change, Sync::Durable);
    m = change.manifest;
  } catch (const Error&) {
    // The folder is this call's own (made just now, under the folder lock): remove it, so that a failed create
    // (a full disk) does not leave a folder without a manifest that blocks the name. The first error is the one
    // to report.
    try {
      remove_tree(d);
    } catch (const Error&) {
    }
    throw;
  }
  sync_directory(options_.root);
  return m;
}

AdapterVersionInfo AdapterRegistry::publish(const std::string& name, const std::vector<float>& values,
                                            std::optional<uint64_t> events, const TileLayout* layout,
                                            std::shared_ptr<const AdapterScope> scope, Sync sync) {
  PendingVersion p = publish_in_memory(name, values, events, layout, std::move(scope));
  write_published(p, sync);
  return p.version;
}

AdapterRegistry::PendingVersion AdapterRegistry::publish_in_memory(const std::string& name,
                                                                   const std::vector<float>& values,
                                                                   std::optional<uint64_t> events,
                                                                   const TileLayout* layout,
                                                                   std::shared_ptr<const AdapterScope> scope) {
  for (float x : values)
    if (!std::isfinite(x))
      throw Error(ErrorKind::InvalidArgument, "adapter '" + name + "': refusing to publish non-finite values");
  std::lock_guard<std::mutex> wlock(write_mu_);
  FileLock folder = lock_folder(options_.root);
  AdapterManifest m = reload_manifest(name);
  const AdapterVersionInfo* parent = m.find(m.current);
  const uint64_t parent_events = parent ? parent->events : 0;
  std::shared_ptr<AdapterImage> image;
  if (layout) {
    // The current version is not read: a trainer republishing over a torn one gives its own layout.
    if (static_cast<int64_t>(values.size()) != layout->num_values())
      throw Error(ErrorKind::InvalidArgument, "new adapter values do not match the new pattern");
    image = AdapterImage::build(*layout, values.data());
  } else {
    auto current = acquire(name, m.current);
    if (static_cast<int64_t>(values.size()) != current->image->layout().num_values())
      throw Error(ErrorKind::InvalidArgument, "adapter '" + name + "' has " +
                                                  std::to_string(current->image->layout().num_values()) +
                                                  " active values; got " + std::to_string(values.size()));
    image = current->image->clone();
    image->set_values(values.data());
  }
  PendingVersion c = next_version(m, std::move(image), m.current, events.value_or(parent_events), std::move(scope));
  auto snap = std::make_shared<AdapterSnapshot>(AdapterSnapshot{name, c.version, m.config, c.image, c.scope});
  std::lock_guard<std::mutex> lock(mu_);
  // Current from now on for this process, and kept in memory until its files are written: an LRU eviction
  // meanwhile must not send a request to a file that does not exist yet.
  unwritten_[name] = {c.manifest, snap};
  // Versions pruned from the folder leave the caches too: a domain that keeps learning would otherwise fill
  // them with versions no request can name any more (requests holding one keep it alive).
  for (const AdapterVersionInfo& old : c.pruned) {
    resident_.erase(key(name, old), [&](const auto& gone) { resident_bytes_ -= snapshot_bytes(*gone); });
    hot_.erase(key(name, old), [](const auto&) {});
  }
  remember_locked(snap);
  return c;
}

void AdapterRegistry::write_published(PendingVersion& pending, Sync sync) {
  const std::string& name = pending.manifest.name;
  std::lock_guard<std::mutex> wlock(write_mu_);
  try {
    FileLock folder = lock_folder(options_.root);
    write_version_files(pending, sync);
  } catch (...) {
    // No file holds the version: this process forgets it too rather than serve (or number again) what a restart
    // would not find. The caller (a trainer) stops, and its log publishes the batch again at its next start.
    std::lock_guard<std::mutex> lock(mu_);
    unwritten_.erase(name);
    manifests_.erase(name);
    resident_.erase(key(name, pending.version), [&](const auto& gone) { resident_bytes_ -= snapshot_bytes(*gone); });
    hot_.erase(key(name, pending.version), [](const auto&) {});
    throw;
  }
  std::lock_guard<std::mutex> lock(mu_);
  unwritten_.erase(name);
}

FileLock AdapterRegistry::lock_domain(const std::string& name, const std::string& purpose) {
  const std::string d = dir(name);
  if (!fs::is_directory(d)) throw Error(ErrorKind::NotFound, "no adapter named '" + name + "' in " + options_.root);
  return FileLock(d + "/training.lock", FileLock::Mode::Try,
                  "domain '" + name + "' is being trained; " + purpose + " when its trainer stops (busy, retry)");
}

AdapterManifest AdapterRegistry::rollback(const std::string& name, uint64_t version) {
  std::lock_guard<std::mutex> wlock(write_mu_);
  FileLock folder = lock_folder(options_.root);
  // A trainer would overwrite the rollback with its next publish, from values the rollback did not change.
  // Taken before the manifest is read again: a trainer's version published in memory is newer than the file.
  if (!fs::exists(dir(name) + "/manifest.json"))
    throw Error(ErrorKind::NotFound, "no adapter named '" + name + "' in " + options_.root);
  FileLock domain = lock_domain(name, "roll it back");
  AdapterManifest m = reload_manifest(name);
  const AdapterVersionInfo* v = m.find(version);
  if (!v) {
    std::string kept;
    for (const auto& x : m.versions) kept += (kept.empty() ? "" : ", ") + std::to_string(x.version);
    throw Error(ErrorKind::NotFound, "adapter '" + name + "' has no version " + std::to_string(version) +
                                         " (kept: " + kept + ")");
  }
  AdapterImage::open(dir(name) + "/" + v->file);  // refuse to make a damaged version current
  if (!v->scope_file.empty()) read_scope_file(dir(name) + "/" + v->scope_file);
  // Training resumes from the rolled-back version. The trainer's state (checkpoint, moments, log) describes
  // the newer values, so it is moved aside, kept, and the next trainer starts afresh from this version.
  const std::string training = dir(name) + "/training";
  if (fs::exists(training)) {
    std::string aside;
    for (int n = 1; aside.empty() || fs::exists(aside); ++n) aside = training + ".rolled-back-" + std::to_string(n);
    std::error_code ec;
    fs::rename(training, aside, ec);
    if (ec) throw Error(ErrorKind::Io, "cannot move '" + training + "' aside: " + ec.message());
  }
  m.current = version;
  save_manifest_locked(m);
  return m;
}

void AdapterRegistry::remove(const std::string& name) {
  std::lock_guard<std::mutex> wlock(write_mu_);
  FileLock folder = lock_folder(options_.root);
  const std::string d = dir(name);
  if (!fs::exists(d + "/manifest.json")) throw Error(ErrorKind::NotFound, "no adapter named '" + name + "' in " + options_.root);
  // A running trainer holds acknowledged events in the folder's log: deleting it would lose them.
  FileLock domain = lock_domain(name, "remove it");
  // Rename first so a crash never leaves a half-deleted adapter under its name.
  const std::string trash = options_.root + "/.removed-" + name + "-" + std::to_string(::getpid());
  std::error_code ec;
  fs::rename(d, trash, ec);
  if (ec) throw Error(ErrorKind::Io, "cannot remove '" + d + "': " + ec.message());
  sync_directory(options_.root);
  remove_tree(trash);
  std::lock_guard<std::mutex> lock(mu_);
  manifests_.erase(name);
  forget_locked(name);
}

std::vector<AdapterListing> AdapterRegistry::list() {
  std::vector<AdapterListing> out;
  if (!fs::exists(options_.root)) return out;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(options_.root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n[0] != '.' && fs::exists(e.path() / "manifest.json")) names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    AdapterListing entry{n, std::nullopt, ""};
    try {
      entry.manifest = load_manifest(n);
    } catch (const Error& e) {
      entry.error = e.what();
    }
    out.push_back(std::move(entry));
  }
  return out;
}

AdapterManifest AdapterRegistry::manifest(const std::string& name) { return load_manifest(name); }

std::shared_ptr<const AdapterSnapshot> AdapterRegistry::acquire(const std::string& name, uint64_t version) {
  const AdapterManifest m = load_manifest(name);
  check_base(m);
  if (version == 0) version = m.current;
  const AdapterVersionInfo* v = m.find(version);
  if (!v) throw Error(ErrorKind::NotFound, "adapter '" + name + "' has no version " + std::to_string(version));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (const auto* cached = resident_.find(key(name, *v))) {
      ++counters_.resident_hits;
      return *cached;
    }
    if (auto u = unwritten_.find(name); u != unwritten_.end() && u->second.snapshot->version.version == version)
      return u->second.snapshot;
  }
  // Read and verified without the lock: other requests keep acquiring cached adapters meanwhile.
  auto image = AdapterImage::open(dir(name) + "/" + v->file);
  if (image->layout().rank != m.config.rank)
    throw Error(ErrorKind::CorruptFile, "adapter '" + name + "' version " + std::to_string(version) +
                                            " does not match its manifest's rank");
  std::shared_ptr<const AdapterScope> scope;
  if (!v->scope_file.empty()) scope = std::make_shared<const AdapterScope>(read_scope_file(dir(name) + "/" + v->scope_file));
  auto snap = std::make_shared<AdapterSnapshot>(AdapterSnapshot{name, *v, m.config, std::move(image), std::move(scope)});
  std::lock_guard<std::mutex> lock(mu_);
  ++counters_.disk_loads;
  if (const auto* raced = resident_.find(key(name, *v))) return *raced;  // another thread loaded it meanwhile
  remember_locked(snap);
  return snap;
}

void AdapterRegistry::remember_locked(const std::shared_ptr<const AdapterSnapshot>& snap) {
  if (!resident_.insert(key(snap->name, snap->version), snap)) return;
  resident_bytes_ += snapshot_bytes(*snap);
  // Evicted snapshots stay alive for requests that still hold them; only the cache lets go.
  while (resident_bytes_ > options_.resident_bytes && resident_.size() > 1)
    resident_bytes_ -= snapshot_bytes(*resident_.pop_oldest());
}

void AdapterRegistry::forget_locked(const std::string& name) {
  const std::string prefix = name + "@";
  resident_.erase_prefixed(prefix, [&](const auto& snap) { resident_bytes_ -= snapshot_bytes(*snap); });
  hot_.erase_prefixed(prefix, [](const auto&) {});
}

std::shared_ptr<const LoraWeights> AdapterRegistry::weights(const AdapterSnapshot& snap) {
  if (!model_) throw Error(ErrorKind::Internal, "adapter weights need the base model loaded");
  const std::string k = key(snap.name, snap.version);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (const auto* cached = hot_.find(k)) {
      ++counters_.hot_hits;
      return *cached;
    }
  }
  // Built and copied to the device without the lock.
  auto w = make_lora_weights(*snap.image, *model_, snap.config.scale(), snap.name, snap.version.version,
                             snap.scope.get());
  std::lock_guard<std::mutex> lock(mu_);
  ++counters_.hot_builds;
  if (const auto* raced = hot_.find(k)) return *raced;
  hot_.insert(k, w);
  while (hot_.size() > std::max<size_t>(1, options_.hot_adapters)) hot_.pop_oldest();
  return w;
}

RegistryStats AdapterRegistry::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  RegistryStats s = counters_;
  s.resident_adapters = resident_.size();
  s.resident_bytes = resident_bytes_;
  s.hot_adapters = hot_.size();
  hot_.for_each([&](const auto& w) { s.hot_bytes += w->bytes; });
  return s;
}

}  // namespace hs
