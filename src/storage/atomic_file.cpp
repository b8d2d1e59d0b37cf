#include "storage/atomic_file.h"

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/error.h"

namespace hs {

namespace {

[[noreturn]] void io_error(const std::string& what, const std::string& path, int err) {
  throw Error(ErrorKind::Io, what + " '" + path + "': " + std::strerror(err));
}

}  // namespace

bool write_fully(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

void sync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_error("cannot open directory", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) io_error("cannot sync directory", dir, err);
}

void remove_tree(const std::string& dir) {
  auto remove_entry = [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); };
  if (::nftw(dir.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
    io_error("cannot delete", dir, errno);
}

void write_file_atomically(const std::string& path, const std::vector<ByteSpan>& pieces, Sync sync) {
  static std::atomic<uint64_t> counter{0};
  const std::filesystem::path target(path);
  const std::string dir = target.has_parent_path() ? target.parent_path().string() : ".";
  const std::string tmp =
      path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) io_error("cannot create", tmp, errno);
  auto fail = [&](const std::string& what) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    io_error(what, tmp, err);
  };
  for (const ByteSpan& piece : pieces)
    if (!write_fully(fd, piece.data, piece.size)) fail("cannot write");
  if (sync == Sync::Durable && ::fsync(fd) != 0) fail("cannot sync");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    io_error("cannot close", tmp, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    io_error("cannot rename onto", path, err);
  }
  if (sync == Sync::Durable) sync_directory(dir);
}

}  // namespace hs
