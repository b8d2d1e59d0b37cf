#include "api/http/http_server.h"

// The router and the small pieces of HTTP text handling; connections are in session.cpp.
#include <boost/beast/http/status.hpp>
#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

namespace hs::http {

namespace bhttp = boost::beast::http;

std::string to_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

namespace {

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < path.size()) {
    size_t next = path.find('/', at);
    if (next == std::string::npos) next = path.size();
    if (next > at) out.push_back(path.substr(at, next - at));
    at = next + 1;
  }
  return out;
}

std::string percent_decode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += s[i] == '+' ? ' ' : s[i];
    }
  }
  return out;
}

}  // namespace

std::map<std::string, std::string> parse_query(const std::string& q) {
  std::map<std::string, std::string> out;
  size_t at = 0;
  while (at <= q.size() && !q.empty()) {
    size_t amp = q.find('&', at);
    if (amp == std::string::npos) amp = q.size();
    const std::string pair = q.substr(at, amp - at);
    const size_t eq = pair.find('=');
    if (!pair.empty()) out[percent_decode(pair.substr(0, eq))] = eq == std::string::npos ? "" : percent_decode(pair.substr(eq + 1));
    at = amp + 1;
  }
  return out;
}

std::string error_body(const std::string& message, const std::string& type) {
  return nlohmann::json{{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string new_request_id() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

void Router::add(const std::string& method, const std::string& pattern, Handler handler) {
  routes_.push_back({method, split_path(pattern), std::move(handler)});
}

void Router::add_websocket(const std::string& path, WebSocketHandler handler) { websockets_[path] = std::move(handler); }

const Handler* Router::match(Request& request, std::string* allowed) const {
  const std::vector<std::string> segments = split_path(request.path);
  allowed->clear();
  for (const Route& r : routes_) {
    if (r.segments.size() != segments.size()) continue;
    std::map<std::string, std::string> params;
    bool ok = true;
    for (size_t i = 0; i < segments.size() && ok; ++i) {
      const std::string& want = r.segments[i];
      if (want.size() > 2 && want.front() == '{' && want.back() == '}') {
        params[want.substr(1, want.size() - 2)] = percent_decode(segments[i]);
      } else {
        ok = want == segments[i];
      }
    }
    if (!ok) continue;
    if (r.method != request.method) {
      *allowed += (allowed->empty() ? "" : ", ") + r.method;
      continue;
    }
    request.params = std::move(params);
    return &r.handler;
  }
  return nullptr;
}

const WebSocketHandler* Router::websocket(const std::string& path) const {
  auto it = websockets_.find(path);
  return it == websockets_.end() ? nullptr : &it->second;
}

}  // namespace hs::http
