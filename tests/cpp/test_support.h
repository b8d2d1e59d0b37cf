#pragma once
// Helpers shared by the C++ unit tests: a tiny model configuration, temporary folders, error kinds.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>

#include "common/error.h"
#include "model/config.h"
#include "storage/atomic_file.h"

namespace hs {

// The Qwen3-1.7B architecture shrunk to a size that runs in milliseconds.
inline ModelConfig tiny_config() {
  ModelConfig c = qwen3_1_7b_config();
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 96;
  c.context_length = 128;
  return c;
}

// A fresh folder under the test temp dir, deleted with everything in it when the test ends.
struct TempDir {
  explicit TempDir(const std::string& tag)
      : path(testing::TempDir() + "hs_" + tag + "_" + std::to_string(::getpid())) {
    std::filesystem::create_directories(path);
  }
  ~TempDir() { remove_tree(path); }
  std::string path;
};

// The kind of the Error fn throws; Internal when it throws none.
inline ErrorKind kind_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.kind();
  }
  return ErrorKind::Internal;
}

}  // namespace hs
