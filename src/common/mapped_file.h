#pragma once
// A read-only memory map of a whole file. Weights are views into it, so it must outlive them:
// tensors hold a shared_ptr to the map.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/error.h"

namespace hs {

class MappedFile {
 public:
  // Throws as open_regular_file (common/fs_util.h) does, and CorruptFile for an empty file.
  static std::shared_ptr<MappedFile> open(const std::string& path, ErrorKind not_regular = ErrorKind::InvalidArgument);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Returns the map's pages to the kernel; a later read faults them in from the file again.
  void drop_resident_pages() const;

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size) : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

}  // namespace hs
