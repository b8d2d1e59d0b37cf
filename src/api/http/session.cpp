// One HTTP connection (and, after an upgrade, one WebSocket), and the listening socket.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <atomic>
#include <deque>
#include <optional>

#include "api/http/http_server.h"
#include "common/error.h"

namespace hs::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

namespace {

class WsSession : public WebSocket, public std::enable_shared_from_this<WsSession> {
 public:
  WsSession(beast::tcp_stream&& stream, const WebSocketHandler& handler, size_t max_message)
      : ws_(std::move(stream)), handler_(handler) {
    ws_.read_message_max(max_message);
  }

  void run(bhttp::request<bhttp::string_body> req) {
    beast::get_lowest_layer(ws_).expires_never();
    ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    ws_.async_accept(req, [self = shared_from_this()](beast::error_code ec) {
      if (ec) return;
      if (self->handler_.on_open) self->handler_.on_open(self);
      self->read();
    });
  }

  void send(std::string text) override {
    net::post(ws_.get_executor(), [self = shared_from_this(), text = std::move(text)]() mutable {
      if (self->closed_) return;
      self->out_.push_back(std::move(text));
      if (!self->writing_) self->write_next();
    });
  }

  void close() override {
    net::post(ws_.get_executor(), [self = shared_from_this()] {
      if (self->closed_) return;
      self->closing_ = true;
      if (!self->writing_) self->do_close();
    });
  }

 private:
  void read() {
    ws_.async_read(buf_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->gone();
      const std::string text = beast::buffers_to_string(self->buf_.data());
      self->buf_.consume(self->buf_.size());
      if (self->handler_.on_message) self->handler_.on_message(self, text, self->ws_.got_text());
      self->read();
    });
  }

  void write_next() {
    if (out_.empty()) {
      writing_ = false;
      if (closing_) do_close();
      return;
    }
    writing_ = true;
    ws_.text(true);
    ws_.async_write(net::buffer(out_.front()), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (self->reported_) return self->out_.clear();  // gone while this write was in flight
      if (ec) return self->gone();
      self->out_.pop_front();
      self->write_next();
    });
  }

  void do_close() {
    closed_ = true;
    ws_.async_close(websocket::close_code::normal, [self = shared_from_this()](beast::error_code) { self->gone(); });
  }

  void gone() {
    if (reported_) return;
    reported_ = closed_ = true;
    if (!writing_) out_.clear();
    if (handler_.on_close) handler_.on_close(shared_from_this());
  }

  websocket::stream<beast::tcp_stream> ws_;
  const WebSocketHandler& handler_;
  beast::flat_buffer buf_;
  std::deque<std::string> out_;
  bool writing_ = false, closing_ = false, closed_ = false, reported_ = false;
};

class Session;

class SessionResponder : public Responder {
 public:
  explicit SessionResponder(std::shared_ptr<Session> session) : session_(std::move(session)) {}
  void send(int status, const std::string& content_type, std::string body, Headers headers) override;
  void start_stream(int status, const std::string& content_type, Headers headers) override;
  void write(std::string chunk) override;
  void end() override;
  void on_disconnect(std::function<void()> callback) override;

 private:
  std::shared_ptr<Session> session_;
};

// The queue of what is written to the socket, in order; a response ends with Whole or Last.
struct Out {
  enum class Kind { Whole, Header, Chunk, Last } kind;
  std::shared_ptr<bhttp::response<bhttp::string_body>> whole;
  std::shared_ptr<bhttp::response<bhttp::empty_body>> head;
  std::shared_ptr<bhttp::response_serializer<bhttp::empty_body>> serializer;
  std::string data;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, const Limits& limits, const Router& router, const RejectObserver& reject,
          std::shared_ptr<std::atomic<int>> pending)
      : stream_(std::move(socket)), limits_(limits), router_(router), reject_(reject), pending_(std::move(pending)) {}
  ~Session() { set_pending(false); }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_request(); });
  }

  // Responder calls, on the strand.
  void queue_whole(int status, const std::string& type, std::string body, const Headers& headers) {
    if (closed_ || answered_) return;
    answered_ = true;
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>(static_cast<bhttp::status>(status), 11);
    decorate(*res, type, headers);
    res->body() = std::move(body);
    res->keep_alive(keep_alive_);
    res->prepare_payload();
    push(Out{Out::Kind::Whole, res, nullptr, nullptr, ""});
  }

  void queue_stream(int status, const std::string& type, const Headers& headers) {
    if (closed_ || answered_) return;
    answered_ = streaming_ = true;
    auto res = std::make_shared<bhttp::response<bhttp::empty_body>>(static_cast<bhttp::status>(status), 11);
    decorate(*res, type, headers);
    res->set(bhttp::field::cache_control, "no-cache");
    res->keep_alive(keep_alive_);
    res->chunked(true);
    push(Out{Out::Kind::Header, nullptr, res, std::make_shared<bhttp::response_serializer<bhttp::empty_body>>(*res), ""});
  }

  void queue_chunk(std::string data) {
    if (closed_ || !streaming_ || data.empty()) return;
    push(Out{Out::Kind::Chunk, nullptr, nullptr, nullptr, std::move(data)});
  }

  void queue_last() {
    if (closed_ || !streaming_) return;
    streaming_ = false;
    push(Out{Out::Kind::Last, nullptr, nullptr, nullptr, ""});
  }

  void set_disconnect(std::function<void()> cb) {
    if (closed_) return cb();
    on_disconnect_ = std::move(cb);
  }

  net::any_io_executor executor() { return stream_.get_executor(); }

 private:
  template <typename Message>
  void decorate(Message& res, const std::string& type, const Headers& headers) {
    res.set(bhttp::field::server, "hyprstream");
    res.set(bhttp::field::content_type, type);
    res.set("X-Request-Id", request_id_);
    for (const auto& [k, v] : headers) res.set(k, v);
  }

  void read_request() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(limits_.max_header_bytes));
    parser_->body_limit(limits_.max_body_bytes);
    answered_ = streaming_ = false;
    request_id_ = new_request_id();
    stream_.expires_after(limits_.header_timeout);
    bhttp::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->on_header(ec);
    });
  }

  void on_header(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset) return close();
    if (ec == beast::error::timeout) {
      if (buffer_.size() > 0) reject_("header_timeout");  // a connection that sent part of a request
      return close();
    }
    if (ec == bhttp::error::header_limit) return refuse(431, "header_too_large", "the request headers are too large");
    // A Content-Length over the limit is refused here, before any of the body is read.
    if (ec == bhttp::error::body_limit)
      return refuse(413, "body_too_large", "the request body exceeds " + std::to_string(limits_.max_body_bytes) + " bytes");
    if (ec) return refuse(400, "bad_request", "malformed HTTP request: " + ec.message());
    stream_.expires_after(limits_.idle_timeout);
    bhttp::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->on_body(ec);
    });
  }

  void on_body(beast::error_code ec) {
    if (ec == bhttp::error::body_limit)
      return refuse(413, "body_too_large", "the request body exceeds " + std::to_string(limits_.max_body_bytes) + " bytes");
    if (ec == beast::error::timeout) {
      reject_("body_timeout");
      return close();
    }
    if (ec) return refuse(400, "bad_request", "malformed HTTP request: " + ec.message());
    stream_.expires_never();
    bhttp::request<bhttp::string_body> msg = parser_->release();
    keep_alive_ = msg.keep_alive();
    if (websocket::is_upgrade(msg)) return upgrade(std::move(msg));
    Request req = to_request(msg);
    request_id_ = req.id;
    dispatch(req);
  }

  Request to_request(const bhttp::request<bhttp::string_body>& msg) {
    Request req;
    req.method = std::string(msg.method_string());
    const std::string target(msg.target());
    const size_t q = target.find('?');
    req.path = target.substr(0, q);
    if (q != std::string::npos) req.query = parse_query(target.substr(q + 1));
    for (const auto& f : msg) req.headers[to_lower(std::string(f.name_string()))] = std::string(f.value());
    req.body = msg.body();
    auto id = req.headers.find("x-request-id");
    req.id = id != req.headers.end() && !id->second.empty() && id->second.size() <= 64 ? id->second : new_request_id();
    return req;
  }

  // Requests dispatched and not yet answered in full, across connections: a stopping server waits for them.
  void set_pending(bool on) {
    if (on != counted_) *pending_ += on ? 1 : -1;
    counted_ = on;
  }

  void dispatch(Request& req) {
    set_pending(true);
    auto responder = std::make_shared<SessionResponder>(shared_from_this());
    watch();
    std::string allowed;  // the path's methods, when it has routes for others
    const Handler* handler = router_.match(req, &allowed);
    if (!handler && !allowed.empty())
      return queue_whole(405, "application/json",
                         error_body("method " + req.method + " is not allowed on " + req.path + " (allowed: " +
                                        allowed + ")", "invalid_request_error"),
                         {{"Allow", allowed}});
    if (!handler)
      return queue_whole(404, "application/json", error_body("no route " + req.path, "not_found_error"), {});
    try {
      (*handler)(req, responder);
    } catch (const std::exception& e) {
      queue_whole(500, "application/json", error_body(std::string("internal error: ") + e.what(), "server_error"), {});
    }
  }

  void upgrade(bhttp::request<bhttp::string_body> msg) {
    const std::string target(msg.target());
    const WebSocketHandler* ws = router_.websocket(target.substr(0, target.find('?')));
    if (!ws) return refuse(404, "bad_request", "no WebSocket endpoint at " + target);
    std::make_shared<WsSession>(std::move(stream_), *ws, limits_.max_body_bytes)->run(std::move(msg));
  }

  void refuse(int status, const std::string& reason, const std::string& message) {
    reject_(reason);
    keep_alive_ = false;
    answered_ = false;
    queue_whole(status, "application/json", error_body(message, "invalid_request_error"), {});
  }

  // While an answer is pending, a read on the socket notices a client that closes the connection.
  void watch() {
    if (watching_ || closed_) return;
    watching_ = true;
    stream_.socket().async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->watching_ = false;
      if (!ec) {
        self->buffer_.commit(n);  // the client's next request, pipelined: parsed later
        // The answer finished while this read completed, so its cancel() found nothing to abort.
        if (self->read_after_watch_ && !self->closed_) self->next_request();
      } else if (ec == net::error::operation_aborted) {
        if (self->read_after_watch_ && !self->closed_) self->next_request();
      } else {
        self->client_gone();
      }
    });
  }

  void push(Out o) {
    out_.push_back(std::move(o));
    if (!writing_) write_next();
  }

  void write_next() {
    if (out_.empty() || closed_) {
      writing_ = false;
      return;
    }
    writing_ = true;
    stream_.expires_after(limits_.idle_timeout);
    Out& o = out_.front();
    auto done = [self = shared_from_this()](beast::error_code ec, size_t) { self->on_write(ec); };
    switch (o.kind) {
      case Out::Kind::Whole: bhttp::async_write(stream_, *o.whole, done); break;
      case Out::Kind::Header: bhttp::async_write_header(stream_, *o.serializer, done); break;
      case Out::Kind::Chunk: net::async_write(stream_, bhttp::make_chunk(net::buffer(o.data)), done); break;
      case Out::Kind::Last: net::async_write(stream_, bhttp::make_chunk_last(), done); break;
    }
  }

  void on_write(beast::error_code ec) {
    if (closed_) {  // closed while this write was in flight: only now may its buffers go
      writing_ = false;
      out_.clear();
      return;
    }
    if (ec) return client_gone();
    const bool response_done = out_.front().kind == Out::Kind::Whole || out_.front().kind == Out::Kind::Last;
    out_.pop_front();
    if (response_done) return finished_response();
    write_next();
  }

  void finished_response() {
    set_pending(false);
    writing_ = false;
    stream_.expires_never();
    on_disconnect_ = nullptr;
    if (!keep_alive_) return close();
    if (watching_) {
      read_after_watch_ = true;
      stream_.socket().cancel();
    } else {
      next_request();
    }
  }

  void next_request() {
    read_after_watch_ = false;
    read_request();
  }

  void client_gone() {
    if (closed_) return;
    close();
    if (auto cb = std::move(on_disconnect_)) cb();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    set_pending(false);
    if (!writing_) out_.clear();  // an in-flight write still reads its buffer: on_write clears the queue
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  const Limits& limits_;
  const Router& router_;
  const RejectObserver& reject_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::deque<Out> out_;
  std::function<void()> on_disconnect_;
  std::string request_id_;
  std::shared_ptr<std::atomic<int>> pending_;
  bool counted_ = false;
  bool keep_alive_ = true, writing_ = false, watching_ = false, read_after_watch_ = false;
  bool answered_ = false, streaming_ = false, closed_ = false;
};

void SessionResponder::send(int status, const std::string& content_type, std::string body, Headers headers) {
  net::post(session_->executor(), [s = session_, status, content_type, body = std::move(body),
                                   headers = std::move(headers)]() mutable {
    s->queue_whole(status, content_type, std::move(body), headers);
  });
}

void SessionResponder::start_stream(int status, const std::string& content_type, Headers headers) {
  net::post(session_->executor(), [s = session_, status, content_type, headers = std::move(headers)] {
    s->queue_stream(status, content_type, headers);
  });
}

void SessionResponder::write(std::string chunk) {
  net::post(session_->executor(), [s = session_, chunk = std::move(chunk)]() mutable { s->queue_chunk(std::move(chunk)); });
}

void SessionResponder::end() {
  net::post(session_->executor(), [s = session_] { s->queue_last(); });
}

void SessionResponder::on_disconnect(std::function<void()> callback) {
  net::post(session_->executor(), [s = session_, callback = std::move(callback)]() mutable {
    s->set_disconnect(std::move(callback));
  });
}

}  // namespace

struct Server::Impl {
  Impl(net::io_context& io, Limits l, const Router& r, RejectObserver rej)
      : acceptor(net::make_strand(io)), limits(l), router(r), reject(std::move(rej)), ioc(io) {}
  void accept() {
    acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) std::make_shared<Session>(std::move(socket), limits, router, reject, pending)->start();
      accept();
    });
  }
  tcp::acceptor acceptor;
  Limits limits;
  const Router& router;
  RejectObserver reject;
  net::io_context& ioc;
  uint16_t port = 0;
  std::shared_ptr<std::atomic<int>> pending = std::make_shared<std::atomic<int>>(0);
};

Server::Server(net::io_context& io, const std::string& host, uint16_t port, Limits limits, const Router& router,
               RejectObserver on_reject)
    : impl_(std::make_unique<Impl>(io, limits, router, std::move(on_reject))) {
  beast::error_code ec;
  const auto address = net::ip::make_address(host, ec);
  if (ec) throw Error(ErrorKind::InvalidArgument, "'" + host + "' is not an IP address to listen on");
  const tcp::endpoint endpoint(address, port);
  auto& a = impl_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    throw Error(ErrorKind::Io, "cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message() +
                                   " (is another server using the port?)");
  impl_->port = a.local_endpoint().port();
  impl_->accept();
}

Server::~Server() = default;

uint16_t Server::port() const { return impl_->port; }

int Server::pending_responses() const { return impl_->pending->load(); }

void Server::stop_accepting() {
  net::post(impl_->acceptor.get_executor(), [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
}

}  // namespace hs::http
