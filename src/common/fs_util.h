#pragma once
#include <string>
#include <vector>

namespace hs {

// Whole file as a string; throws NotFound with the path when it cannot be read.
std::string read_text_file(const std::string& path);

// Names of the entries of a folder (without "." and ".."), sorted; throws Io when it cannot be read.
std::vector<std::string> list_directory(const std::string& dir);

// Creates the folder and its parents when missing; throws Io when that fails.
void ensure_directory(const std::string& path);

}  // namespace hs
