# Writes OUT, a C++ file returning the bytes of the dashboard and the OpenAPI document (script mode: cmake -P).
file(READ "${IN_DIR}/dashboard.html" DASHBOARD)
file(READ "${IN_DIR}/openapi.json" OPENAPI)
file(WRITE "${OUT}" "// Generated from src/api/server/assets by embed_assets.cmake; do not edit.\n"
  "#include \"api/server/assets.h\"\n\nnamespace hs::api {\n\n"
  "std::string_view dashboard_html() {\n  return R\"HSASSET(${DASHBOARD})HSASSET\";\n}\n\n"
  "std::string_view openapi_json() {\n  return R\"HSASSET(${OPENAPI})HSASSET\";\n}\n\n}  // namespace hs::api\n")
