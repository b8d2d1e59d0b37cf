#pragma once
#include <string>

namespace hs {

// Whole file as a string; throws NotFound with the path when it cannot be read.
std::string read_text_file(const std::string& path);

// Creates the folder and its parents when missing; throws Io when that fails.
void ensure_directory(const std::string& path);

}  // namespace hs
