#include "common/metrics.h"

#include <httplib.h>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::metrics {
namespace {

using ::testing::HasSubstr;

TEST(Metrics, RendersCountersGaugesHistogramsInTextFormat) {
  Registry reg;
  Counter* c = reg.AddCounter("t_execs_total", "Execs.", {"outcome"});
  c->Inc({"ok"});
  c->Inc({"ok"}, 2);
  c->Inc({"timed\"out"});
  c->Inc({"a", "b"});  // wrong arity: ignored, no crash
  EXPECT_EQ(c->Value({"ok"}), 3);
  EXPECT_EQ(reg.AddCounter("t_execs_total", "again", {"outcome"}), c);
  Gauge* g = reg.AddGauge("t_live", "Live.", {});
  g->Set({}, 5);
  g->Add({}, -2);
  Histogram* h = reg.AddHistogram("t_lat_seconds", "Latency.", {}, {0.1, 1});
  h->Observe({}, 0.05);
  h->Observe({}, 0.5);
  h->Observe({}, 5);
  reg.AddCallbackGauge("t_cb", "Callback.", [] { return 7.5; });
  std::string text = reg.Render();
  EXPECT_THAT(text, HasSubstr("# TYPE t_execs_total counter\n"));
  EXPECT_THAT(text, HasSubstr("t_execs_total{outcome=\"ok\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("t_execs_total{outcome=\"timed\\\"out\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("t_live 3\n"));
  EXPECT_THAT(text, HasSubstr("t_lat_seconds_bucket{le=\"0.1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("t_lat_seconds_bucket{le=\"1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("t_lat_seconds_bucket{le=\"+Inf\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("t_lat_seconds_count 3\n"));
  EXPECT_THAT(text, HasSubstr("t_cb 7.5\n"));
}

TEST(Metrics, HttpServerServesMetricsAndHealthOnLoopback) {
  Registry reg;
  reg.AddCounter("t_hits_total", "Hits.")->Inc();
  auto server = HttpServer::Start("127.0.0.1", 0, &reg);
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::Client cli("127.0.0.1", (*server)->port());
  auto res = cli.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr("t_hits_total 1"));
  res = cli.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body, "ok\n");
  res = cli.Get("/nope");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
}

}  // namespace
}  // namespace dsec::metrics
