#include "common/metrics.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"

namespace dsec::metrics {
namespace {

bool CheckArity(const std::vector<std::string>& names, const Labels& values) {
  if (names.size() == values.size()) return true;
  DSEC_LOG_ERROR("metrics: {} label values for {} label names", values.size(),
                 names.size());
  return false;
}

std::string Escape(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string LabelText(const std::vector<std::string>& names,
                      const Labels& values, const std::string& extra = "") {
  std::string out;
  for (size_t i = 0; i < names.size() && i < values.size(); ++i) {
    absl::StrAppend(&out, out.empty() ? "" : ",", names[i], "=\"",
                    Escape(values[i]), "\"");
  }
  if (!extra.empty()) absl::StrAppend(&out, out.empty() ? "" : ",", extra);
  return out.empty() ? "" : absl::StrCat("{", out, "}");
}

std::string Num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  if (v == std::floor(v) && std::fabs(v) < 1e15)
    return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.9g", v);
}

}  // namespace

void Counter::Inc(const Labels& values, double by) {
  if (!CheckArity(names_, values) || by < 0) return;
  absl::MutexLock lock(&mu_);
  values_[values] += by;
}

double Counter::Value(const Labels& values) const {
  absl::MutexLock lock(&mu_);
  auto it = values_.find(values);
  return it == values_.end() ? 0 : it->second;
}

void Gauge::Set(const Labels& values, double v) {
  if (!CheckArity(names_, values)) return;
  absl::MutexLock lock(&mu_);
  values_[values] = v;
}

void Gauge::Add(const Labels& values, double by) {
  if (!CheckArity(names_, values)) return;
  absl::MutexLock lock(&mu_);
  values_[values] += by;
}

double Gauge::Value(const Labels& values) const {
  absl::MutexLock lock(&mu_);
  auto it = values_.find(values);
  return it == values_.end() ? 0 : it->second;
}

void Histogram::Observe(const Labels& values, double v) {
  if (!CheckArity(names_, values)) return;
  absl::MutexLock lock(&mu_);
  Series& s = series_[values];
  if (s.buckets.empty()) s.buckets.assign(bounds_.size(), 0);
  auto it = std::lower_bound(bounds_.begin(), bounds_.end(), v);
  if (it != bounds_.end()) ++s.buckets[it - bounds_.begin()];
  ++s.count;
  s.sum += v;
}

uint64_t Histogram::Count(const Labels& values) const {
  absl::MutexLock lock(&mu_);
  auto it = series_.find(values);
  return it == series_.end() ? 0 : it->second.count;
}

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30};
}

Registry& Registry::Default() {
  static Registry* r = new Registry();
  return *r;
}

Counter* Registry::AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  Entry& e = entries_[name];
  if (!e.counter) {
    e.help = help;
    e.type = "counter";
    e.counter = std::make_unique<Counter>();
    e.counter->names_ = std::move(label_names);
  }
  return e.counter.get();
}

Gauge* Registry::AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  Entry& e = entries_[name];
  if (!e.gauge) {
    e.help = help;
    e.type = "gauge";
    e.gauge = std::make_unique<Gauge>();
    e.gauge->names_ = std::move(label_names);
  }
  return e.gauge.get();
}

Histogram* Registry::AddHistogram(const std::string& name,
                                  const std::string& help,
                                  std::vector<std::string> label_names,
                                  std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  Entry& e = entries_[name];
  if (!e.histogram) {
    e.help = help;
    e.type = "histogram";
    e.histogram = std::make_unique<Histogram>();
    e.histogram->names_ = std::move(label_names);
    std::sort(bounds.begin(), bounds.end());
    e.histogram->bounds_ = std::move(bounds);
  }
  return e.histogram.get();
}

void Registry::AddCallbackGauge(const std::string& name,
                                const std::string& help,
                                std::function<double()> fn) {
  absl::MutexLock lock(&mu_);
  Entry& e = entries_[name];
  e.help = help;
  e.type = "gauge";
  e.callback = std::move(fn);
}

std::string Registry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& [name, e] : entries_) {
    absl::StrAppend(&out, "# HELP ", name, " ", e.help, "\n# TYPE ", name, " ",
                    e.type, "\n");
    if (e.callback) {
      absl::StrAppend(&out, name, " ", Num(e.callback()), "\n");
    } else if (e.counter) {
      absl::MutexLock l(&e.counter->mu_);
      for (const auto& [labels, v] : e.counter->values_) {
        absl::StrAppend(&out, name, LabelText(e.counter->names_, labels), " ",
                        Num(v), "\n");
      }
    } else if (e.gauge) {
      absl::MutexLock l(&e.gauge->mu_);
      for (const auto& [labels, v] : e.gauge->values_) {
        absl::StrAppend(&out, name, LabelText(e.gauge->names_, labels), " ",
                        Num(v), "\n");
      }
    } else if (e.histogram) {
      const Histogram& h = *e.histogram;
      absl::MutexLock l(&h.mu_);
      for (const auto& [labels, s] : h.series_) {
        uint64_t cum = 0;
        for (size_t i = 0; i < h.bounds_.size(); ++i) {
          cum += s.buckets[i];
          absl::StrAppend(
              &out, name, "_bucket",
              LabelText(h.names_, labels,
                        absl::StrCat("le=\"", Num(h.bounds_[i]), "\"")),
              " ", cum, "\n");
        }
        absl::StrAppend(&out, name, "_bucket",
                        LabelText(h.names_, labels, "le=\"+Inf\""), " ",
                        s.count, "\n");
        absl::StrAppend(&out, name, "_sum", LabelText(h.names_, labels), " ",
                        Num(s.sum), "\n");
        absl::StrAppend(&out, name, "_count", LabelText(h.names_, labels), " ",
                        s.count, "\n");
      }
    }
  }
  return out;
}

struct HttpServer::Impl {
  httplib::Server server;
  std::thread thread;
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& host, int port, const Registry* registry) {
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->impl_ = std::make_unique<Impl>();
  s->impl_->server.Get(
      "/metrics", [registry](const httplib::Request&, httplib::Response& res) {
        res.set_content(registry->Render(), "text/plain; version=0.0.4");
      });
  s->impl_->server.Get("/healthz",
                       [](const httplib::Request&, httplib::Response& res) {
                         res.set_content("ok\n", "text/plain");
                       });
  int bound = port == 0
                  ? s->impl_->server.bind_to_any_port(host)
                  : (s->impl_->server.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", host, ":", port));
  }
  s->port_ = bound;
  Impl* impl = s->impl_.get();
  impl->thread = std::thread([impl] { impl->server.listen_after_bind(); });
  return s;
}

HttpServer::~HttpServer() {
  if (!impl_) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace dsec::metrics
