#pragma once
// Nearest-rank percentile, for latency figures in metrics and benchmarks. Torch-free.
#include <algorithm>
#include <cmath>
#include <vector>

namespace hs {

// The smallest sample with at least q of the samples at or below it (q in (0, 1]); 0 for no samples.
inline double percentile(std::vector<double> xs, double q) {
  if (xs.empty()) return 0;
  std::sort(xs.begin(), xs.end());
  const size_t k = static_cast<size_t>(std::ceil(q * static_cast<double>(xs.size())));
  return xs[std::min(xs.size(), std::max<size_t>(k, 1)) - 1];
}

}  // namespace hs
