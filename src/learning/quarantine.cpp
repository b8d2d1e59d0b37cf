#include "learning/quarantine.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "common/fs_util.h"
#include "storage/atomic_file.h"

namespace hs {

namespace {

std::string record_name(uint64_t seq) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "batch-%020llu.json", static_cast<unsigned long long>(seq));
  return buf;
}

}  // namespace

std::string rejected_candidate_path(const std::string& dir, uint64_t seq) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "candidate-%020llu.hsl", static_cast<unsigned long long>(seq));
  return dir + "/quarantine/" + buf;
}

QuarantinedBatch quarantine_batch(const std::string& dir, uint64_t seq, const std::string& reason,
                                  const std::string& payload, const std::vector<std::string>& ids,
                                  const std::optional<GuardRejection>& rejection) {
  const std::string folder = dir + "/quarantine";
  ensure_directory(folder);
  nlohmann::json events = nlohmann::json::array();
  std::istringstream lines(payload);
  for (std::string line; std::getline(lines, line);) events.push_back(line);
  QuarantinedBatch q{seq, reason, ids, folder + "/" + record_name(seq), rejection};
  nlohmann::json record = {{"seq", seq}, {"reason", reason}, {"ids", ids}, {"events", events}};
  // A non-finite drift (a diverged candidate) is kept as null: JSON has no NaN.
  auto number = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(); };
  if (rejection)
    record["guard"] = {{"drift", number(rejection->drift)},
                       {"max_drift", rejection->max_drift},
                       {"worst_canary", number(rejection->worst_canary)},
                       {"candidate", rejection->candidate}};
  // Events and reasons are valid UTF-8 (the parser refuses anything else); replace guards the message text.
  write_file_atomically(q.file, record.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  return q;
}

std::map<uint64_t, QuarantinedBatch> read_quarantine(const std::string& dir) {
  std::map<uint64_t, QuarantinedBatch> out;
  const std::string folder = dir + "/quarantine";
  if (::access(folder.c_str(), F_OK) != 0) return out;
  for (const std::string& name : list_directory(folder)) {
    if (name.rfind("batch-", 0) != 0 || name.size() < 5 || name.compare(name.size() - 5, 5, ".json") != 0) continue;
    const std::string path = folder + "/" + name;
    try {
      const nlohmann::json j = nlohmann::json::parse(read_text_file(path, ErrorKind::CorruptFile));
      QuarantinedBatch q{j.at("seq").get<uint64_t>(), j.at("reason").get<std::string>(),
                         j.at("ids").get<std::vector<std::string>>(), path, std::nullopt};
      if (j.contains("guard")) {
        const nlohmann::json& g = j.at("guard");
        auto number = [&](const char* key) { return g.at(key).is_null() ? NAN : g.at(key).get<double>(); };
        q.rejection = GuardRejection{number("drift"), number("max_drift"), number("worst_canary"),
                                     g.at("candidate").get<std::string>()};
      }
      out[q.seq] = std::move(q);
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorKind::CorruptFile, "quarantine record '" + path + "' is unreadable: " + e.what());
    }
  }
  return out;
}

std::optional<ApplyAttempt> read_apply_attempt(const std::string& dir) {
  const std::string path = dir + "/applying";
  if (::access(path.c_str(), F_OK) != 0) return std::nullopt;
  try {
    const nlohmann::json j = nlohmann::json::parse(read_text_file(path, ErrorKind::CorruptFile));
    return ApplyAttempt{j.at("seq").get<uint64_t>(), j.at("attempts").get<int>()};
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;  // torn by a crash while it was written: the attempt had not started
  }
}

void begin_apply_attempt(const std::string& dir, const ApplyAttempt& a) {
  const std::string path = dir + "/applying";
  const std::string text = nlohmann::json{{"seq", a.seq}, {"attempts", a.attempts}}.dump();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || !write_fully(fd, text.data(), text.size())) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw Error(ErrorKind::Io, "cannot write '" + path + "': " + std::strerror(err));
  }
  ::close(fd);
}

void end_apply_attempt(const std::string& dir) { ::unlink((dir + "/applying").c_str()); }

}  // namespace hs
