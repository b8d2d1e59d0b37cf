#include "common/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace hs {

namespace {

std::string holder_of(int fd) {
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  std::string pid(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
  return pid;
}

}  // namespace

FileLock::FileLock(const std::string& path, Mode mode, const std::string& busy_message) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(ErrorKind::Io, "cannot open the lock file '" + path + "': " + std::strerror(errno));
  int rc;
  while ((rc = ::flock(fd_, LOCK_EX | (mode == Mode::Try ? LOCK_NB : 0))) != 0 && errno == EINTR) {
  }
  if (rc == 0) return;
  const int err = errno;
  const std::string holder = err == EWOULDBLOCK ? holder_of(fd_) : "";
  ::close(fd_);
  fd_ = -1;
  if (err != EWOULDBLOCK) throw Error(ErrorKind::Io, "cannot lock '" + path + "': " + std::strerror(err));
  throw Error(ErrorKind::Busy, busy_message + (holder.empty() ? "" : " (held by process " + holder + ")"));
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the lock
}

void FileLock::record_holder() {
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, pid.data(), pid.size(), 0);
}

}  // namespace hs
