#include "common/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/fs_util.h"

namespace hs {

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path, ErrorKind not_regular) {
  const int fd = open_regular_file(path, not_regular);
  struct stat st {};
  ::fstat(fd, &st);
  size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    throw Error(ErrorKind::CorruptFile, "'" + path + "' is empty");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw Error(ErrorKind::Internal, "mmap of '" + path + "' failed: " + std::strerror(errno));
  return std::shared_ptr<MappedFile>(new MappedFile(path, static_cast<const uint8_t*>(p), size));
}

void MappedFile::drop_resident_pages() const {
  // The map is read-only and private, so no page was ever written: dropping one loses nothing.
  ::madvise(const_cast<uint8_t*>(data_), size_, MADV_DONTNEED);
}

MappedFile::~MappedFile() { ::munmap(const_cast<uint8_t*>(data_), size_); }

}  // namespace hs
