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

// Whether a replacement must be on disk before it returns (fsync of the file and of its directory), or may
// wait for the OS: a killed process still leaves the old bytes or the new ones, a power loss may leave a torn
// file (for files rebuilt from a log, which a checksum tells apart).
enum class Sync { Durable, Deferred };

// Writes the pieces to a temporary file beside `path`, syncs it (Durable), renames it over `path` and syncs
// the directory (Durable). Throws Io on failure and leaves `path` as it was.
void write_file_atomically(const std::string& path, const std::vector<ByteSpan>& pieces, Sync sync = Sync::Durable);

inline void write_file_atomically(const std::string& path, std::string_view text, Sync sync = Sync::Durable) {
  write_file_atomically(path, {ByteSpan{text.data(), text.size()}}, sync);
}

// Writes all n bytes to fd, retrying short writes and EINTR; false with errno set when the OS refuses.
bool write_fully(int fd, const void* data, size_t n);

// fsync of a directory, so that a rename or unlink in it is durable.
void sync_directory(const std::string& dir);

// Deletes a folder and everything in it. Written on POSIX nftw because libtorch.so exports its own copy of
// std::filesystem::remove_all, which binaries linking torch pick up and which crashes there.
void remove_tree(const std::string& dir);

}  // namespace hs
