#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"

namespace hs {

namespace {

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  // The shortest text that reads back as the same double.
  char buf[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// Label values escape backslash, double quote and newline, as the exposition format requires.
std::string label_text(const Labels& labels, const std::string& extra_key = "", const std::string& extra = "") {
  Labels all = labels;
  if (!extra_key.empty()) all.emplace_back(extra_key, extra);
  if (all.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < all.size(); ++i) {
    if (i) out += ",";
    out += all[i].first + "=\"";
    for (char c : all[i].second) {
      if (c == '\\' || c == '"') out += '\\';
      out += c == '\n' ? std::string("\\n") : std::string(1, c);
    }
    out += "\"";
  }
  return out + "}";
}

}  // namespace

MetricFamily::MetricFamily(std::string name, std::string help, Type type, std::vector<double> buckets)
    : name_(std::move(name)), help_(std::move(help)), type_(type), bounds_(std::move(buckets)) {
  if (!std::is_sorted(bounds_.begin(), bounds_.end()))
    throw Error(ErrorKind::Internal, "histogram buckets of " + name_ + " are not ascending");
}

MetricFamily::Series& MetricFamily::series(const Labels& labels) {
  Series& s = series_[labels];
  if (type_ == Type::Histogram && s.buckets.empty()) s.buckets.assign(bounds_.size(), 0);
  return s;
}

void MetricFamily::add(double v, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  series(labels).value += v;
}

void MetricFamily::set(double v, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  series(labels).value = v;
}

void MetricFamily::observe(double v, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  Series& s = series(labels);
  for (size_t i = 0; i < bounds_.size(); ++i)
    if (v <= bounds_[i]) ++s.buckets[i];
  s.sum += v;
  ++s.count;
}

double MetricFamily::value(const Labels& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = series_.find(labels);
  return it == series_.end() ? 0 : it->second.value;
}

uint64_t MetricFamily::count(const Labels& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = series_.find(labels);
  return it == series_.end() ? 0 : it->second.count;
}

void MetricFamily::write(std::string& out) const {
  static const char* kTypes[] = {"counter", "gauge", "histogram"};
  out += "# HELP " + name_ + " " + help_ + "\n# TYPE " + name_ + " " + kTypes[static_cast<int>(type_)] + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  if (series_.empty() && type_ != Type::Histogram) out += name_ + " 0\n";
  for (const auto& [labels, s] : series_) {
    if (type_ != Type::Histogram) {
      out += name_ + label_text(labels) + " " + number(s.value) + "\n";
      continue;
    }
    for (size_t i = 0; i < bounds_.size(); ++i)
      out += name_ + "_bucket" + label_text(labels, "le", number(bounds_[i])) + " " + std::to_string(s.buckets[i]) + "\n";
    out += name_ + "_bucket" + label_text(labels, "le", "+Inf") + " " + std::to_string(s.count) + "\n";
    out += name_ + "_sum" + label_text(labels) + " " + number(s.sum) + "\n";
    out += name_ + "_count" + label_text(labels) + " " + std::to_string(s.count) + "\n";
  }
}

MetricFamily& MetricsRegistry::add(std::unique_ptr<MetricFamily> family) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& f : families_)
    if (f->name() == family->name()) {
      if (f->type() != family->type())
        throw Error(ErrorKind::Internal, "metric " + f->name() + " registered twice with different types");
      return *f;  // one family per name: the exposition format allows no repeats
    }
  families_.push_back(std::move(family));
  return *families_.back();
}

MetricFamily& MetricsRegistry::counter(const std::string& name, const std::string& help) {
  return add(std::make_unique<MetricFamily>(name, help, MetricFamily::Type::Counter));
}

MetricFamily& MetricsRegistry::gauge(const std::string& name, const std::string& help) {
  return add(std::make_unique<MetricFamily>(name, help, MetricFamily::Type::Gauge));
}

MetricFamily& MetricsRegistry::histogram(const std::string& name, const std::string& help, std::vector<double> buckets) {
  return add(std::make_unique<MetricFamily>(name, help, MetricFamily::Type::Histogram, std::move(buckets)));
}

std::string MetricsRegistry::text() const {
  std::string out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& f : families_) f->write(out);
  return out;
}

std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

}  // namespace hs
