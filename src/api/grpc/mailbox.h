#pragma once
// Messages handed from threads that must not block (the engine thread, trainer notifications) to the gRPC
// handler thread that writes them.
#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>

#include "common/error.h"

namespace hs::api {

template <typename T>
class Mailbox {
 public:
  // Unbounded: for what the call's own request produces (a generation's tokens, bounded by its max_tokens).
  Mailbox() = default;

  // Bounded, for subscriptions, whose producers never wait: once more than `max_bytes` wait unread (the client
  // reads more slowly than its subscriptions produce), they are dropped and the call ends with
  // RESOURCE_EXHAUSTED, which wakes a handler blocked in Write(). The client subscribes again and resumes from
  // what it has (the adapter's versions, its events' ids).
  Mailbox(grpc::ServerContext& call, size_t max_bytes) : call_(&call), max_bytes_(max_bytes) {}

  void put(T item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (overflowed_) return;
      bytes_ += cost(item);
      items_.push_back(std::move(item));
      if (!call_ || bytes_ <= max_bytes_) {
        ready_.notify_one();
        return;
      }
      overflowed_ = true;
      items_.clear();
      ready_.notify_all();
    }
    grpc_call_cancel_with_status(call_->c_call(), GRPC_STATUS_RESOURCE_EXHAUSTED, overflow_message().c_str(), nullptr);
  }

  // Ends take(): what is already in is still taken.
  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    ready_.notify_all();
  }

  bool closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }

  // Everything put in so far, waiting for at least one item; empty when closed or the call is cancelled (its
  // deadline passed, the client went away or the server stops). Throws Busy once a bounded mailbox overflowed.
  std::deque<T> take(grpc::ServerContext& call) {
    std::unique_lock<std::mutex> lock(mu_);
    while (items_.empty() && !closed_ && !overflowed_ && !call.IsCancelled())
      ready_.wait_for(lock, std::chrono::milliseconds(50));  // wakes to notice a cancelled call
    if (overflowed_) throw Error(ErrorKind::Busy, overflow_message());
    bytes_ = 0;
    return std::exchange(items_, {});
  }

  // As take(call), heedless of the call: waits until an item comes or the mailbox closes (or overflows).
  std::deque<T> take() {
    std::unique_lock<std::mutex> lock(mu_);
    ready_.wait(lock, [this] { return !items_.empty() || closed_ || overflowed_; });
    if (overflowed_) throw Error(ErrorKind::Busy, overflow_message());
    bytes_ = 0;
    return std::exchange(items_, {});
  }

 private:
  static size_t cost(const T& item) {
    if constexpr (requires { item.ByteSizeLong(); })
      return item.ByteSizeLong();
    else
      return sizeof(T);
  }

  std::string overflow_message() const {
    return "the client reads too slowly: more than " + std::to_string(max_bytes_ >> 20) +
           " MiB of messages waited unread; read the stream as it comes, or subscribe to fewer domains";
  }

  grpc::ServerContext* call_ = nullptr;  // bounded mailboxes only
  size_t max_bytes_ = 0, bytes_ = 0;
  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<T> items_;
  bool closed_ = false, overflowed_ = false;
};

// What a subscription's mailbox holds unread at most: ~40,000 notifications of ~100 bytes, so a client that
// pauses for a while under heavy learning keeps its stream, and a server can spare it for each of many clients.
constexpr size_t kSubscriptionBytes = size_t{4} << 20;

}  // namespace hs::api
