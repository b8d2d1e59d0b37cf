// `events push`: a file of learning events sent to a running server over gRPC (Learning.StreamEvents), with a
// progress bar on a terminal and a summary at the end.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "api/grpc/event_push.h"
#include "cli/commands.h"
#include "common/error.h"
#include "common/fs_util.h"

namespace hs::cli {

namespace {

std::vector<std::string> event_lines(const std::string& path) {
  std::istringstream in(read_text_file(path));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
  if (lines.empty()) throw Error(ErrorKind::InvalidArgument, "'" + path + "' holds no event (one JSON object per line)");
  return lines;
}

void draw(const api::PushProgress& p) {
  const int width = 30;
  const int done = p.total ? static_cast<int>(width * std::min(p.applied, p.total) / p.total) : width;
  std::fprintf(stderr, "\r[%s%s] %llu/%llu acknowledged, %llu durable, %llu applied ", std::string(done, '#').c_str(),
               std::string(width - done, '.').c_str(), static_cast<unsigned long long>(p.acknowledged),
               static_cast<unsigned long long>(p.total), static_cast<unsigned long long>(p.durable),
               static_cast<unsigned long long>(p.applied));
}

}  // namespace

CLI::App* add_events_command(CLI::App& app, EventsFlags& f) {
  auto* events = app.add_subcommand("events", "Learning events for a running server");
  events->require_subcommand(1);
  auto* push = events->add_subcommand(
      "push", "Send a JSONL file of learning events (as `train` reads them) to a server over gRPC; returns once "
              "every accepted event is applied");
  push->add_option("--server", f.server, "The server's gRPC address: host:port or grpc://host:port")->required();
  push->add_option("--domain", f.domain, "The domain whose adapter learns")->required();
  push->add_option("file", f.file, "Events, one JSON object with an \"id\" per line")->required();
  push->add_flag("--json", f.json, "Print the summary as JSON");
  return push;
}

int run_events_push(const EventsFlags& f) {
  const std::vector<std::string> events = event_lines(f.file);
  const bool bar = ::isatty(STDERR_FILENO) != 0;
  const api::PushReport r = api::push_events(f.server, f.domain, events, [bar](const api::PushProgress& p) {
    if (bar) draw(p);
  });
  if (bar) std::fprintf(stderr, "\n");
  if (f.json) {
    std::cout << nlohmann::json{{"domain", f.domain},          {"events", events.size()},
                                {"accepted", r.accepted},      {"duplicates", r.duplicates},
                                {"rejected", r.rejected},      {"busy_retries", r.busy_retries},
                                {"applied", r.applied},        {"version", r.version},
                                {"errors", r.errors}}
                     .dump()
              << "\n";
  } else {
    std::cout << events.size() << " events: " << r.accepted << " accepted, " << r.duplicates << " duplicates, "
              << r.rejected << " rejected; " << r.applied << " applied, up to version " << r.version << "\n";
    for (const std::string& e : r.errors) std::cout << "  " << e << "\n";
  }
  return r.rejected > 0 ? 2 : 0;
}

}  // namespace hs::cli
