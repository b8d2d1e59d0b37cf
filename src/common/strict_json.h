#pragma once
// JSON from clients, parsed strictly: malformed text, invalid UTF-8, numbers out of range and duplicate keys
// (which a lenient parser resolves silently, last one winning) are refused with an InvalidArgument naming the
// problem; `what` names the text in messages ("the event", "the request body"). Json is nlohmann::json or
// nlohmann::ordered_json (where key order shows, as in a chat template's tojson). Torch-free, header-only on
// nlohmann/json.
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace hs {

template <typename Json = nlohmann::json>
Json parse_strict_json(std::string_view text, const std::string& what) {
  using json = Json;
  std::vector<std::set<std::string>> keys;  // per open object
  auto check = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) keys.emplace_back();
    if (event == json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
    if (event == json::parse_event_t::key && !keys.empty() &&
        !keys.back().insert(parsed.template get<std::string>()).second)
      throw Error(ErrorKind::InvalidArgument,
                  what + " has the key \"" + parsed.template get<std::string>() + "\" twice");
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), check);
  } catch (const typename json::out_of_range& e) {
    throw Error(ErrorKind::InvalidArgument, what + ": a number is not finite or out of range: " + e.what());
  } catch (const typename json::exception& e) {
    throw Error(ErrorKind::InvalidArgument, "malformed JSON in " + what + ": " + e.what());
  }
}

}  // namespace hs
