#pragma once
// Files served as they are, compiled into the binary (the machine may be offline; no CDN): the dashboard at /
// and the OpenAPI document. Their sources are src/api/server/assets/.
#include <string_view>

namespace hs::api {

std::string_view dashboard_html();
std::string_view openapi_json();

}  // namespace hs::api
