// Prometheus metrics: counters, gauges and histograms with fixed label
// names, rendered in the text exposition format, and a tiny HTTP server
// (cpp-httplib) serving /metrics and /healthz.
//
//   auto& reg = dsec::metrics::Registry::Default();
//   auto* execs = reg.AddCounter("dsec_agent_execs_total", "Execs run.",
//                                {"outcome"});
//   execs->Inc({"ok"});
//   auto* lat = reg.AddHistogram("dsec_agent_exec_seconds", "Exec latency.",
//                                {}, dsec::metrics::LatencyBuckets());
//   lat->Observe({}, 0.0021);
//   auto* live = reg.AddGauge("dsec_agent_sandboxes", "Live sandboxes.",
//   {"state"}); live->Set({"running"}, 12);
//   // Or a callback gauge evaluated at scrape time:
//   reg.AddCallbackGauge("dsec_agent_warm_ready", "Warm sandboxes ready.",
//                        [&] { return pool.ready(); });
//
// Thread-safe. Metric objects live as long as the Registry. Label values are
// escaped; the number of values must match the label names (extra or missing
// values are ignored with an error log, never a crash).
#ifndef DSEC_COMMON_METRICS_H_
#define DSEC_COMMON_METRICS_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace dsec::metrics {

using Labels = std::vector<std::string>;  // values, in label-name order

class Counter {
 public:
  void Inc(const Labels& values = {}, double by = 1);
  double Value(const Labels& values = {}) const;

 private:
  friend class Registry;
  std::vector<std::string> names_;
  mutable absl::Mutex mu_;
  std::map<Labels, double> values_ ABSL_GUARDED_BY(mu_);
};

class Gauge {
 public:
  void Set(const Labels& values, double v);
  void Add(const Labels& values, double by);
  double Value(const Labels& values = {}) const;

 private:
  friend class Registry;
  std::vector<std::string> names_;
  mutable absl::Mutex mu_;
  std::map<Labels, double> values_ ABSL_GUARDED_BY(mu_);
};

class Histogram {
 public:
  void Observe(const Labels& values, double v);
  // Count of observations (for tests).
  uint64_t Count(const Labels& values = {}) const;

 private:
  friend class Registry;
  struct Series {
    std::vector<uint64_t> buckets;  // cumulative at render time
    uint64_t count = 0;
    double sum = 0;
  };
  std::vector<std::string> names_;
  std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::map<Labels, Series> series_ ABSL_GUARDED_BY(mu_);
};

// 100 us .. ~30 s, roughly x2.5 per bucket.
std::vector<double> LatencyBuckets();

class Registry {
 public:
  static Registry& Default();

  // Re-adding a name returns the existing metric (same kind required).
  Counter* AddCounter(const std::string& name, const std::string& help,
                      std::vector<std::string> label_names = {});
  Gauge* AddGauge(const std::string& name, const std::string& help,
                  std::vector<std::string> label_names = {});
  Histogram* AddHistogram(const std::string& name, const std::string& help,
                          std::vector<std::string> label_names,
                          std::vector<double> bounds);
  void AddCallbackGauge(const std::string& name, const std::string& help,
                        std::function<double()> fn);

  // Text exposition format 0.0.4.
  std::string Render() const;

 private:
  struct Entry {
    std::string help;
    std::string type;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
    std::function<double()> callback;
  };
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

// Serves GET /metrics (registry text) and /healthz ("ok") on host:port in a
// background thread. port 0 picks a free port (see port()).
class HttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& host, int port, const Registry* registry);
  ~HttpServer();  // stops and joins
  int port() const { return port_; }

 private:
  HttpServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace dsec::metrics

#endif  // DSEC_COMMON_METRICS_H_
