#pragma once
// An advisory lock on a file (flock), held for the life of the object. flock locks belong to an open file, so
// two holders in one process exclude each other just as two processes do. Torch-free.
#include <string>

namespace hs {

class FileLock {
 public:
  enum class Mode { Wait, Try };
  // Creates the file when missing. Wait blocks until the lock is free; Try throws Busy, with `busy_message`
  // and the holder's pid when it recorded one, if another holder has it. Throws Io when the file cannot be
  // opened or locked.
  FileLock(const std::string& path, Mode mode, const std::string& busy_message = "");
  ~FileLock();
  FileLock(FileLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  FileLock& operator=(FileLock&&) = delete;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

  // Writes this process's pid into the lock file, for the Busy message others get.
  void record_holder();

 private:
  int fd_ = -1;
};

}  // namespace hs
