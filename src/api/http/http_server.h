#pragma once
// HTTP/1.1 and WebSocket on Boost.Beast: parsing, limits, timeouts, keep-alive, chunked streams. Routes and
// JSON live in the route files; this layer knows bytes, statuses and connections. Torch-free.
//
// Each connection runs on its own strand. A handler gets the parsed request and a Responder, which it may
// answer at once or later from any thread (the engine thread's callbacks, say): every Responder call is
// posted to the connection's strand. While a handler's answer is pending, the connection watches its socket
// and reports a client that went away (on_disconnect), so a generation can be cancelled.
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace hs::http {

struct Limits {
  size_t max_body_bytes = size_t{4} << 20;
  size_t max_header_bytes = size_t{16} << 10;
  std::chrono::milliseconds header_timeout{10000};  // to receive a request's headers
  std::chrono::milliseconds idle_timeout{60000};    // a request body in progress, a stalled write, keep-alive
};

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query
  std::map<std::string, std::string> query;
  std::map<std::string, std::string> params;  // from the route pattern, e.g. {domain}
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
  std::string id;  // request id: X-Request-Id when the client sent one, else generated
};

using Headers = std::vector<std::pair<std::string, std::string>>;

// The answer to one request: either send() once, or start_stream(), write()s and end().
class Responder {
 public:
  virtual ~Responder() = default;
  virtual void send(int status, const std::string& content_type, std::string body, Headers headers = {}) = 0;
  virtual void start_stream(int status, const std::string& content_type, Headers headers = {}) = 0;
  virtual void write(std::string chunk) = 0;
  virtual void end() = 0;
  // Called once (on the connection's strand) if the client disconnects before the answer ends.
  virtual void on_disconnect(std::function<void()> callback) = 0;
};

// A WebSocket connection, after the upgrade. send() may be called from any thread.
class WebSocket {
 public:
  virtual ~WebSocket() = default;
  virtual void send(std::string text) = 0;
  virtual void close() = 0;
};

struct WebSocketHandler {
  std::function<void(std::shared_ptr<WebSocket>)> on_open;
  std::function<void(std::shared_ptr<WebSocket>, const std::string& text, bool is_text)> on_message;
  std::function<void(std::shared_ptr<WebSocket>)> on_close;
};

using Handler = std::function<void(Request& request, std::shared_ptr<Responder> responder)>;

// Problems found before any handler ran (counted by the caller's metrics): "header_timeout", "body_timeout",
// "body_too_large", "header_too_large", "bad_request".
using RejectObserver = std::function<void(const std::string& reason)>;

class Router {
 public:
  // Patterns are paths whose segments may be {name}: "/v1/adapters/{domain}/train".
  void add(const std::string& method, const std::string& pattern, Handler handler);
  void add_websocket(const std::string& path, WebSocketHandler handler);
  // The handler for a request (params filled), or null; then *allowed lists the methods the path has (a 405)
  // or is empty (a 404).
  const Handler* match(Request& request, std::string* allowed) const;
  const WebSocketHandler* websocket(const std::string& path) const;

 private:
  struct Route {
    std::string method;
    std::vector<std::string> segments;
    Handler handler;
  };
  std::vector<Route> routes_;
  std::map<std::string, WebSocketHandler> websockets_;
};

class Server {
 public:
  // Listens at once (throws Io naming the address when it cannot bind).
  Server(boost::asio::io_context& io, const std::string& host, uint16_t port, Limits limits, const Router& router,
         RejectObserver on_reject);
  ~Server();
  uint16_t port() const;  // the bound port (useful with port 0)
  void stop_accepting();
  // Requests received whose answer has not been written in full (a stopping server waits for them).
  int pending_responses() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.
std::string error_body(const std::string& message, const std::string& type);
std::string to_lower(std::string s);
std::map<std::string, std::string> parse_query(const std::string& query);

// A fresh request id: 16 hex digits.
std::string new_request_id();

}  // namespace hs::http
