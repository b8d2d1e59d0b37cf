#pragma once
// Counters, gauges and histograms with labels, written in Prometheus' text exposition format (version 0.0.4).
// Debian has no prometheus-cpp, and the format is small: a family is "# HELP", "# TYPE" and one line per
// labelled series. Updates take one mutex per family; reads copy. Torch-free.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace hs {

using Labels = std::vector<std::pair<std::string, std::string>>;

class MetricFamily {
 public:
  enum class Type { Counter, Gauge, Histogram };
  MetricFamily(std::string name, std::string help, Type type, std::vector<double> buckets = {});

  void add(double v, const Labels& labels = {});  // counters and gauges
  void set(double v, const Labels& labels = {});  // gauges
  void observe(double v, const Labels& labels = {});  // histograms
  double value(const Labels& labels = {}) const;  // a counter's or gauge's current value (0 if never set)
  uint64_t count(const Labels& labels = {}) const;  // a histogram's observations
  void write(std::string& out) const;
  const std::string& name() const { return name_; }
  Type type() const { return type_; }

 private:
  struct Series {
    double value = 0;
    std::vector<uint64_t> buckets;  // cumulative counts are computed when written
    double sum = 0;
    uint64_t count = 0;
  };
  Series& series(const Labels& labels);

  std::string name_, help_;
  Type type_;
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::map<Labels, Series> series_;
};

// Registering a name twice returns the family registered first, so independent parts may share one.
class MetricsRegistry {
 public:
  MetricFamily& counter(const std::string& name, const std::string& help);
  MetricFamily& gauge(const std::string& name, const std::string& help);
  // Upper bounds in ascending order; +Inf is added.
  MetricFamily& histogram(const std::string& name, const std::string& help, std::vector<double> buckets);
  std::string text() const;  // every family, in registration order

 private:
  MetricFamily& add(std::unique_ptr<MetricFamily> family);
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<MetricFamily>> families_;
};

// Bucket bounds for latencies in seconds, from 1 ms to 60 s.
std::vector<double> latency_buckets();

}  // namespace hs
