#pragma once
// Crash-safe file replacement: readers see the old bytes or the new ones, never a mix, even after a power
// loss. Torch-free.
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace hs {

struct ByteSpan {
  const void* data;
  size_t size;
};

// Writes the pieces to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs the
// directory. Throws Io on failure and leaves `path` as it was.
void write_file_atomically(const std::string& path, const std::vector<ByteSpan>& pieces);

inline void write_file_atomically(const std::string& path, std::string_view text) {
  write_file_atomically(path, {ByteSpan{text.data(), text.size()}});
}

// Writes all n bytes to fd, retrying short writes and EINTR; false with errno set when the OS refuses.
bool write_fully(int fd, const void* data, size_t n);

// fsync of a directory, so that a rename or unlink in it is durable.
void sync_directory(const std::string& dir);

// Deletes a folder and everything in it. Written on POSIX nftw because libtorch.so exports its own copy of
// std::filesystem::remove_all, which binaries linking torch pick up and which crashes there.
void remove_tree(const std::string& dir);

}  // namespace hs
