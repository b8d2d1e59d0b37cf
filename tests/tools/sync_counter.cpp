// LD_PRELOAD shim for pytest: counts a process's fdatasync and fsync calls and, at exit, writes them as JSON
// to the file named by $HS_SYNC_COUNTS. The only way to see the --fsync policy from outside: with "never",
// the log is handed to the OS and the process must not sync it.
#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace {

std::atomic<long> fdatasync_calls{0}, fsync_calls{0};

using SyncFn = int (*)(int);

SyncFn next_symbol(const char* name) { return reinterpret_cast<SyncFn>(dlsym(RTLD_NEXT, name)); }

struct Report {
  ~Report() {
    const char* path = std::getenv("HS_SYNC_COUNTS");
    if (!path) return;
    if (FILE* f = std::fopen(path, "w")) {
      std::fprintf(f, "{\"fdatasync\": %ld, \"fsync\": %ld}\n", fdatasync_calls.load(), fsync_calls.load());
      std::fclose(f);
    }
  }
} report;

}  // namespace

extern "C" int fdatasync(int fd) {
  static const SyncFn next = next_symbol("fdatasync");
  fdatasync_calls += 1;
  return next(fd);
}

extern "C" int fsync(int fd) {
  static const SyncFn next = next_symbol("fsync");
  fsync_calls += 1;
  return next(fd);
}
