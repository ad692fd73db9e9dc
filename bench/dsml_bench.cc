// DSML parsing throughput (issue 5): Parse and StreamParser on a realistic
// multi-call reply and on one long string value, against a baseline in the
// same run: nlohmann::json parsing the same calls written as an
// OpenAI-style JSON tool-call payload.
//
//   build/bench/dsml_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true  (one line)
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "client/dsml.h"

namespace dsec::client::dsml {
namespace {

// About 5 KB: some content, then four parallel calls of the kinds an
// agent makes (a shell command, a file write with code, an edit, a search
// with JSON arguments).
std::string MultiCallText() {
  std::string code;
  for (int i = 0; i < 40; ++i) {
    absl::StrAppend(&code, "def f", i, "(x: int) -> int:\n    return x * ", i,
                    "  # a < b > c \"quoted\"\n");
  }
  std::vector<ToolCall> calls = {
      {"bash",
       {MakeStringParameter("command",
                            "cd /repo && python -m pytest -q tests/ 2>&1 | "
                            "tail -n 40"),
        MakeJsonParameter("timeout", 120)}},
      {"write_file",
       {MakeStringParameter("path", "/repo/src/generated.py"),
        MakeStringParameter("content", code)}},
      {"edit_file",
       {MakeStringParameter("path", "/repo/src/main.py"),
        MakeStringParameter("old_string", "    return compute(a, b)\n"),
        MakeStringParameter("new_string",
                            "    if b == 0:\n        raise ValueError('b')\n"
                            "    return compute(a, b)\n"),
        MakeJsonParameter("replace_all", false)}},
      {"search_files",
       {MakeStringParameter("pattern", "def (compute|helper)_[a-z]+"),
        MakeJsonParameter(
            "options",
            {{"paths", {"src", "tests"}}, {"max", 50}, {"case", true}})}}};
  return absl::StrCat(
      "I'll run the tests, add the generated module, guard the division and "
      "look for the helpers, all at once.\n\n",
      *RenderCalls(calls));
}

std::string LongStringText() {
  std::string value;
  while (value.size() < (1 << 20)) {
    absl::StrAppend(&value, "line ", value.size(),
                    ": <tag attr=\"v\"> text ｜ more text\n");
  }
  return *RenderCalls({{"write_file",
                        {MakeStringParameter("path", "/big.txt"),
                         MakeStringParameter("content", value)}}});
}

// The same calls as [{"name": ..., "arguments": {...}}].
std::string JsonEquivalent(const std::string& dsml) {
  nlohmann::json payload = nlohmann::json::array();
  for (const ToolCall& call : Parse(dsml).calls) {
    nlohmann::json args = nlohmann::json::object();
    for (const Parameter& p : call.params) args[p.name] = p.value;
    payload.push_back({{"name", call.name}, {"arguments", args}});
  }
  return payload.dump();
}

const std::string& Text(int which) {
  static const std::string* texts[] = {new std::string(MultiCallText()),
                                       new std::string(LongStringText())};
  return *texts[which];
}

void SetLabel(benchmark::State& state, int which) {
  state.SetLabel(which == 0 ? "multi-call" : "long string");
}

void BM_Parse(benchmark::State& state) {
  const std::string& text = Text(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    ParseResult r = Parse(text);
    benchmark::DoNotOptimize(r);
    if (!r.ok()) state.SkipWithError("parse failed");
  }
  state.SetBytesProcessed(state.iterations() * text.size());
  SetLabel(state, static_cast<int>(state.range(0)));
}
BENCHMARK(BM_Parse)->Arg(0)->Arg(1);

// Feeds chunks of range(1) bytes, as a sampler hands out tokens.
void BM_Stream(benchmark::State& state) {
  const std::string& text = Text(static_cast<int>(state.range(0)));
  size_t chunk = static_cast<size_t>(state.range(1));
  for (auto _ : state) {
    StreamParser parser;
    size_t calls = 0;
    for (size_t at = 0; at < text.size(); at += chunk) {
      calls +=
          parser.Feed(absl::string_view(text).substr(at, chunk)).calls.size();
    }
    calls += parser.Finish().calls.size();
    benchmark::DoNotOptimize(calls);
  }
  state.SetBytesProcessed(state.iterations() * text.size());
  SetLabel(state, static_cast<int>(state.range(0)));
}
BENCHMARK(BM_Stream)->Args({0, 4})->Args({0, 16})->Args({1, 4})->Args({1, 64});

// Baseline: nlohmann::json parse of the equivalent JSON payload.
void BM_JsonBaseline(benchmark::State& state) {
  const std::string json =
      JsonEquivalent(Text(static_cast<int>(state.range(0))));
  for (auto _ : state) {
    nlohmann::json parsed = nlohmann::json::parse(json);
    benchmark::DoNotOptimize(parsed);
  }
  state.SetBytesProcessed(state.iterations() * json.size());
  SetLabel(state, static_cast<int>(state.range(0)));
  state.counters["payload_bytes"] = static_cast<double>(json.size());
}
BENCHMARK(BM_JsonBaseline)->Arg(0)->Arg(1);

}  // namespace
}  // namespace dsec::client::dsml

BENCHMARK_MAIN();
