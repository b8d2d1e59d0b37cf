#pragma once
#include <string>
#include <vector>

#include "common/error.h"

namespace hs {

// Opens a path that must be a regular file for reading, without blocking on a FIFO or a device, and returns
// the descriptor. Throws NotFound when it does not exist, `not_regular` when it is a folder, FIFO, socket or
// device (InvalidArgument for paths users give; CorruptFile for files inside our own stores), Io otherwise.
int open_regular_file(const std::string& path, ErrorKind not_regular = ErrorKind::InvalidArgument);

// Whole file as a string; throws as open_regular_file does.
std::string read_text_file(const std::string& path, ErrorKind not_regular = ErrorKind::InvalidArgument);

// Names of the entries of a folder (without "." and ".."), sorted; throws Io when it cannot be read.
std::vector<std::string> list_directory(const std::string& dir);

// Creates the folder and its parents when missing; throws Io when that fails.
void ensure_directory(const std::string& path);

}  // namespace hs
