#pragma once
// Messages handed from threads that must not block (the engine thread, trainer notifications) to the gRPC
// handler thread that writes them. Unbounded: what is put in is what one call's own requests and
// subscriptions produce.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

namespace hs::api {

template <typename T>
class Mailbox {
 public:
  void put(T item) {
    std::lock_guard<std::mutex> lock(mu_);
    items_.push_back(std::move(item));
    ready_.notify_one();
  }

  // Ends take(): what is already in is still taken.
  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    ready_.notify_all();
  }

  // Everything put in so far, waiting for at least one item; empty when closed or the call is cancelled (its
  // deadline passed, the client went away or the server stops).
  std::deque<T> take(grpc::ServerContext& call) {
    std::unique_lock<std::mutex> lock(mu_);
    while (items_.empty() && !closed_ && !call.IsCancelled()) ready_.wait_for(lock, std::chrono::milliseconds(50));
    return std::exchange(items_, {});
  }

 private:
  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<T> items_;
  bool closed_ = false;
};

}  // namespace hs::api
