#include "common/fs_util.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace hs {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::NotFound, "cannot read '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void ensure_directory(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) throw Error(ErrorKind::Io, "cannot create '" + path + "': " + ec.message());
}

}  // namespace hs
