#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rollout/policy/chat.h"
#include "rollout/policy/generator.h"
#include "rollout/policy/model.h"
#include "rollout/policy/tokenizer.h"

namespace dsec::policy {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Role = ChatMessage::Role;

// ------------------------------------------------------------- tokenizer

TEST(Tokenizer, VocabularyHasBytesThenSpecials) {
  Tokenizer tok;
  EXPECT_EQ(tok.bos(), 256);
  EXPECT_EQ(tok.eos(), 257);
  EXPECT_EQ(tok.SpecialId(kBos), tok.bos());
  EXPECT_EQ(tok.SpecialId(kEos), tok.eos());
  std::vector<int32_t> ids;
  for (absl::string_view s :
       {kUser, kAssistant, kThinkOpen, kThinkClose, kDsmlOpen, kDsmlCloseOpen,
        kToolResultOpen, kToolResultClose, kToolCallsClose}) {
    std::optional<int32_t> id = tok.SpecialId(s);
    ASSERT_TRUE(id.has_value()) << s;
    EXPECT_GE(*id, 256);
    EXPECT_LT(*id, tok.vocab_size());
    EXPECT_THAT(tok.Encode(s), ElementsAre(*id)) << s;
    ids.push_back(*id);
  }
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::unique(ids.begin(), ids.end()), ids.end());
  EXPECT_FALSE(tok.SpecialId("<think").has_value());
  // The full-width bar is U+FF5C, the low line U+2581.
  EXPECT_EQ(std::string(kBos),
            "<\xEF\xBD\x9C"
            "begin\xE2\x96\x81of\xE2\x96\x81sentence"
            "\xEF\xBD\x9C>");
}

TEST(Tokenizer, RoundTripsRandomBytes) {
  Tokenizer tok;
  std::mt19937_64 rng(7);
  const std::string pieces[] = {"<", "｜", "DSML", "/", ">", "think", "a"};
  for (int iter = 0; iter < 300; ++iter) {
    std::string s;
    const int n = rng() % 64;
    for (int i = 0; i < n; ++i) {
      if (rng() % 3 == 0) {
        s += pieces[rng() % std::size(pieces)];
      } else {
        s += static_cast<char>(rng() % 256);
      }
    }
    const std::vector<int32_t> ids = tok.Encode(s);
    for (int32_t id : ids) ASSERT_LT(id, tok.vocab_size());
    ASSERT_EQ(tok.Decode(ids), s);
  }
}

TEST(Tokenizer, MatchesSpecialsGreedilyLongestFirst) {
  Tokenizer tok;
  const std::string text =
      absl::StrCat(kBos, "hi", kToolCallsClose, kDsmlOpen, "invoke",
                   kDsmlCloseOpen, "x<thin", kThinkClose);
  const std::vector<int32_t> ids = tok.Encode(text);
  std::vector<int32_t> want = {tok.bos(), 'h', 'i',
                               *tok.SpecialId(kToolCallsClose),
                               *tok.SpecialId(kDsmlOpen)};
  for (char c : std::string("invoke")) want.push_back(c);
  want.push_back(*tok.SpecialId(kDsmlCloseOpen));
  for (char c : std::string("x<thin")) want.push_back(c);
  want.push_back(*tok.SpecialId(kThinkClose));
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok.Decode(ids), text);
}

// ------------------------------------------------------------------ chat

std::vector<client::dsml::ToolSpec> Tools() {
  client::dsml::ToolSpec t;
  t.name = "bash";
  t.description = "run a command";
  t.parameters = nlohmann::json::parse(
      R"({"type":"object","properties":{"cmd":{"type":"string"}}})");
  return {t};
}

std::string Calls() {
  client::dsml::ToolCall call;
  call.name = "bash";
  call.params.push_back(client::dsml::MakeStringParameter("cmd", "ls"));
  return *client::dsml::RenderCalls({call});
}

TEST(Chat, NonThinkGolden) {
  const ChatMessage msgs[] = {{Role::kSystem, "Be brief."},
                              {Role::kUser, "hi"},
                              {Role::kAssistant, "hello", "ignored"},
                              {Role::kUser, "bye"}};
  EXPECT_EQ(
      EncodeChat(msgs, {}, ThinkingMode::kNonThink, true),
      absl::StrCat(kBos, "Be brief.", kUser, "hi", kAssistant, kThinkClose,
                   "hello", kEos, kUser, "bye", kAssistant, kThinkClose));
  EXPECT_EQ(EncodeChat(msgs, {}, ThinkingMode::kNonThink, false),
            absl::StrCat(kBos, "Be brief.", kUser, "hi", kAssistant,
                         kThinkClose, "hello", kEos, kUser, "bye"));
}

TEST(Chat, HighGoldenWithTools) {
  const ChatMessage msgs[] = {{Role::kSystem, "sys"}, {Role::kUser, "q"}};
  const auto tools = Tools();
  EXPECT_EQ(
      EncodeChat(msgs, tools, ThinkingMode::kHigh, true),
      absl::StrCat(kBos, "sys\n\n", client::dsml::RenderToolsPrompt(tools),
                   kUser, "q", kAssistant, kThinkOpen));
}

TEST(Chat, MaxGoldenHasEffortPrefix) {
  const ChatMessage msgs[] = {{Role::kUser, "q"}};
  const auto tools = Tools();
  EXPECT_EQ(EncodeChat(msgs, tools, ThinkingMode::kMax, true),
            absl::StrCat(kBos, kMaxEffortPrefix,
                         client::dsml::RenderToolsPrompt(tools), kUser, "q",
                         kAssistant, kThinkOpen));
  EXPECT_EQ(
      EncodeChat(msgs, {}, ThinkingMode::kMax, true),
      absl::StrCat(kBos, kMaxEffortPrefix, kUser, "q", kAssistant, kThinkOpen));
}

TEST(Chat, InterleavedThinkingKeepsReasoningOnlyAfterLastUser) {
  const std::string calls = Calls();
  const ChatMessage msgs[] = {
      {Role::kUser, "u1"},
      {Role::kAssistant, "a1", "r1"},
      {Role::kUser, "u2"},
      {Role::kAssistant, "", "r2", calls},
      {Role::kTool, client::dsml::RenderResults({"out"})},
      {Role::kAssistant, "done", "r3"},
  };
  EXPECT_EQ(
      EncodeChat(msgs, {}, ThinkingMode::kHigh, false),
      absl::StrCat(kBos, kUser, "u1", kAssistant, kThinkClose, "a1", kEos,
                   kUser, "u2", kAssistant, kThinkOpen, "r2", kThinkClose,
                   calls, kEos, kUser, "<tool_result>out</tool_result>",
                   kAssistant, kThinkOpen, "r3", kThinkClose, "done", kEos));
  const std::string non = EncodeChat(msgs, {}, ThinkingMode::kNonThink, false);
  EXPECT_THAT(non, ::testing::Not(HasSubstr("r2")));
  EXPECT_THAT(non, ::testing::Not(HasSubstr("r1")));
}

TEST(Chat, ToolLoopPromptsAreAppendOnly) {
  const auto tools = Tools();
  for (ThinkingMode mode :
       {ThinkingMode::kNonThink, ThinkingMode::kHigh, ThinkingMode::kMax}) {
    std::vector<ChatMessage> msgs = {{Role::kSystem, "sys"},
                                     {Role::kUser, "fix the bug"}};
    std::string prev = EncodeChat(msgs, tools, mode, true);
    for (int step = 0; step < 3; ++step) {
      // What the model generated after the prompt (stops at the calls).
      const std::string reasoning = absl::StrCat("think ", step);
      const std::string content = absl::StrCat("step ", step, "\n");
      std::string generated =
          mode == ThinkingMode::kNonThink
              ? absl::StrCat(content, Calls())
              : absl::StrCat(reasoning, kThinkClose, content, Calls());
      ParsedReply reply = SplitReply(generated, mode);
      msgs.push_back(
          {Role::kAssistant, reply.content, reply.reasoning, reply.tool_calls});
      msgs.push_back({Role::kTool, client::dsml::RenderResults({"r1", "r2"})});
      const std::string next = EncodeChat(msgs, tools, mode, true);
      ASSERT_TRUE(absl::StartsWith(next, prev + generated))
          << "mode " << static_cast<int>(mode) << " step " << step;
      prev = next;
    }
  }
}

TEST(Chat, SplitReply) {
  const std::string calls = Calls();
  ParsedReply r =
      SplitReply(absl::StrCat("why", kThinkClose, "answer", calls, kEos),
                 ThinkingMode::kHigh);
  EXPECT_EQ(r.reasoning, "why");
  EXPECT_EQ(r.content, "answer");
  EXPECT_EQ(r.tool_calls, calls);
  r = SplitReply(absl::StrCat("plain", kEos), ThinkingMode::kNonThink);
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, "plain");
  EXPECT_EQ(r.tool_calls, "");
  r = SplitReply("still thinking", ThinkingMode::kMax);
  EXPECT_EQ(r.reasoning, "still thinking");
  EXPECT_EQ(r.content, "");
  r = SplitReply(absl::StrCat("a", kThinkClose, "b"), ThinkingMode::kNonThink);
  EXPECT_EQ(r.content, absl::StrCat("a", kThinkClose, "b"));
}

// ----------------------------------------------------------------- model

ModelConfig SmallConfig() {
  ModelConfig c;
  c.hidden = 64;
  c.layers = 2;
  c.heads = 2;
  c.head_dim = 16;
  c.max_seq_len = 512;
  c.moe = ModelConfig::DefaultMoe(64);
  c.moe.num_experts = 8;
  c.moe.intermediate = 64;
  return c;
}

std::unique_ptr<Model> SmallModel(int threads = 1, uint64_t seed = 1) {
  ModelRunOptions run;
  run.threads = threads;
  auto m = Model::Random(SmallConfig(), seed, run);
  EXPECT_THAT(m.status(), IsOk());
  return std::move(m).value();
}

std::vector<int32_t> Prompt(absl::string_view text) {
  return Tokenizer().Encode(absl::StrCat(kBos, text));
}

std::string TempPath(absl::string_view name) {
  return absl::StrCat(::testing::TempDir(), "/policy_test_", getpid(), "_",
                      name);
}

TEST(Model, RejectsBadConfig) {
  auto expect_bad = [](ModelConfig c, absl::string_view what) {
    EXPECT_THAT(c.Validate(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(what)));
    EXPECT_THAT(Model::Random(c, 1).status(),
                StatusIs(absl::StatusCode::kInvalidArgument));
  };
  ModelConfig c = SmallConfig();
  EXPECT_THAT(c.Validate(), IsOk());
  EXPECT_THAT(TinyConfig().Validate(), IsOk());
  EXPECT_THAT(ModelConfig().Validate(), IsOk());
  c.head_dim = 24;
  expect_bad(c, "head_dim");
  c = SmallConfig();
  c.moe.hidden = 32;
  expect_bad(c, "moe.hidden");
  c = SmallConfig();
  c.layers = 0;
  expect_bad(c, "layers");
  c = SmallConfig();
  c.vocab_size = 1000;
  expect_bad(c, "vocab_size");
  c = SmallConfig();
  c.moe.top_k = 9;
  expect_bad(c, "top_k");
  c = SmallConfig();
  c.rms_eps = 0;
  expect_bad(c, "rms_eps");
  ModelRunOptions run;
  run.threads = 0;
  EXPECT_THAT(Model::Random(SmallConfig(), 1, run).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

void ExpectNear(absl::Span<const float> got, absl::Span<const float> want,
                const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i])))
        << what << " element " << i;
  }
}

TEST(Model, IncrementalDecodeMatchesFullRecomputation) {
  for (int threads : {1, 2}) {
    auto model = SmallModel(threads);
    const int64_t v = model->config().vocab_size;
    const std::vector<int32_t> tokens =
        Prompt("The quick brown fox jumps over the lazy dog; <think>x");
    KvCache full(model->config());
    ForwardSegment seg{&full, tokens, ForwardSegment::Logits::kAll};
    auto all = model->Forward({&seg, 1});
    ASSERT_THAT(all.status(), IsOk());
    ASSERT_EQ(all->logits.size(), tokens.size() * v);
    // One token at a time, and in uneven chunks.
    KvCache one(model->config()), chunked(model->config());
    for (size_t i = 0; i < tokens.size(); ++i) {
      ForwardSegment s{&one, absl::MakeConstSpan(&tokens[i], 1)};
      auto r = model->Forward({&s, 1});
      ASSERT_THAT(r.status(), IsOk());
      ExpectNear(r->logits, absl::MakeConstSpan(all->logits).subspan(i * v, v),
                 absl::StrCat("token ", i));
    }
    size_t at = 0;
    for (size_t n : {5, 1, 17, 100}) {
      n = std::min(n, tokens.size() - at);
      if (n == 0) break;
      ForwardSegment s{&chunked, absl::MakeConstSpan(&tokens[at], n)};
      auto r = model->Forward({&s, 1});
      ASSERT_THAT(r.status(), IsOk());
      at += n;
      ExpectNear(r->logits,
                 absl::MakeConstSpan(all->logits).subspan((at - 1) * v, v),
                 absl::StrCat("chunk ending ", at));
    }
    EXPECT_EQ(one.size(), static_cast<int64_t>(tokens.size()));
  }
}

TEST(Model, CopiedPrefixGivesBitwiseEqualLogits) {
  auto model = SmallModel(2);
  const int64_t v = model->config().vocab_size;
  const std::vector<int32_t> a = Prompt(
      "A shared system prompt of some length, then the first user's text");
  std::vector<int32_t> b(a.begin(), a.begin() + 37);  // not panel-aligned
  for (int32_t t : Prompt("and a second user's different question")) {
    b.push_back(t);
  }
  KvCache fresh(model->config());
  ForwardSegment all{&fresh, b, ForwardSegment::Logits::kAll};
  auto want = model->Forward({&all, 1});
  ASSERT_THAT(want.status(), IsOk());
  KvCache donor(model->config());
  ForwardSegment d{&donor, a};
  ASSERT_THAT(model->Forward({&d, 1}).status(), IsOk());
  // Into an empty cache, and into one that held something longer.
  KvCache empty(model->config()), used(model->config());
  const std::vector<int32_t> other = Prompt(std::string(120, 'u'));
  ForwardSegment u{&used, other};
  ASSERT_THAT(model->Forward({&u, 1}).status(), IsOk());
  for (KvCache* cache : {&empty, &used}) {
    cache->CopyPrefix(donor, 37);
    ASSERT_EQ(cache->size(), 37);
    ForwardSegment rest{cache, absl::MakeConstSpan(b).subspan(37),
                        ForwardSegment::Logits::kAll};
    auto got = model->Forward({&rest, 1});
    ASSERT_THAT(got.status(), IsOk());
    EXPECT_EQ(got->logits, std::vector<float>(want->logits.begin() + 37 * v,
                                              want->logits.end()));
  }
}

TEST(Model, RejectsBadSegments) {
  auto model = SmallModel();
  KvCache cache(model->config());
  std::vector<int32_t> bad = {1, 5000};
  ForwardSegment s{&cache, bad};
  EXPECT_THAT(model->Forward({&s, 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::vector<int32_t> ok = {1, 2};
  ForwardSegment twice[] = {{&cache, ok}, {&cache, ok}};
  EXPECT_THAT(model->Forward(twice).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::vector<int32_t> too_long(513, 1);
  ForwardSegment l{&cache, too_long};
  EXPECT_THAT(model->Forward({&l, 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(cache.size(), 0);
}

TEST(Model, RoutingHasShapeAndReplaysExactly) {
  auto model = SmallModel();
  const ModelConfig& c = model->config();
  const std::vector<int32_t> tokens = Prompt("routing replay");
  KvCache a(c);
  ForwardSegment sa{&a, tokens, ForwardSegment::Logits::kAll};
  auto ra = model->Forward({&sa, 1});
  ASSERT_THAT(ra.status(), IsOk());
  ASSERT_EQ(ra->routing.size(), static_cast<size_t>(c.layers));
  for (const moe::RoutingInfo& r : ra->routing) {
    EXPECT_EQ(r.num_tokens, static_cast<int64_t>(tokens.size()));
    EXPECT_EQ(r.top_k, c.moe.top_k);
    EXPECT_EQ(r.experts.size(), tokens.size() * c.moe.top_k);
  }
  // Forced routing through the MoE gives the same output, bit for bit.
  KvCache b(c);
  ForwardSegment sb{&b, tokens, ForwardSegment::Logits::kAll};
  auto rb = model->Forward({&sb, 1}, ra->routing);
  ASSERT_THAT(rb.status(), IsOk());
  EXPECT_EQ(rb->logits, ra->logits);
  EXPECT_EQ(rb->routing, ra->routing);
  // A different routing changes the output.
  std::vector<moe::RoutingInfo> other = ra->routing;
  for (int32_t& e : other[0].experts) e = (e + 1) % c.moe.num_experts;
  KvCache d(c);
  ForwardSegment sd{&d, tokens, ForwardSegment::Logits::kAll};
  auto rd = model->Forward({&sd, 1}, other);
  ASSERT_THAT(rd.status(), IsOk());
  EXPECT_NE(rd->logits, ra->logits);
  // A malformed one is rejected.
  other[1].experts.pop_back();
  KvCache e(c);
  ForwardSegment se{&e, tokens};
  EXPECT_THAT(model->Forward({&se, 1}, other).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Model, SaveLoadRoundTripAndCorruptFiles) {
  auto model = SmallModel();
  const std::string path = TempPath("model.bin");
  ASSERT_THAT(model->Save(path), IsOk());
  auto loaded = Model::Load(path);
  ASSERT_THAT(loaded.status(), IsOk());
  EXPECT_EQ((*loaded)->fingerprint(), model->fingerprint());
  const std::vector<int32_t> tokens = Prompt("save and load");
  KvCache a(model->config()), b(model->config());
  ForwardSegment sa{&a, tokens}, sb{&b, tokens};
  auto ra = model->Forward({&sa, 1});
  auto rb = (*loaded)->Forward({&sb, 1});
  ASSERT_THAT(ra.status(), IsOk());
  ASSERT_THAT(rb.status(), IsOk());
  EXPECT_EQ(ra->logits, rb->logits);

  std::string data;
  {
    std::ifstream in(path, std::ios::binary);
    data.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
  };
  std::mt19937_64 rng(3);
  for (int i = 0; i < 20; ++i) {  // flipped bytes anywhere
    std::string bad = data;
    bad[rng() % bad.size()] ^= static_cast<char>(1 + rng() % 255);
    write(bad);
    const absl::StatusCode code = Model::Load(path).status().code();
    EXPECT_TRUE(code == absl::StatusCode::kDataLoss ||
                code == absl::StatusCode::kInvalidArgument)
        << code;
  }
  for (size_t n : {size_t{0}, size_t{5}, size_t{40}, data.size() / 2,
                   data.size() - 1}) {  // truncated
    write(data.substr(0, n));
    const absl::StatusCode code = Model::Load(path).status().code();
    EXPECT_TRUE(code == absl::StatusCode::kDataLoss ||
                code == absl::StatusCode::kInvalidArgument)
        << n << " " << code;
  }
  write(data + "x");
  EXPECT_THAT(Model::Load(path).status(),
              StatusIs(absl::StatusCode::kDataLoss));
  write("not a model at all");
  EXPECT_THAT(Model::Load(path).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Model::Load(path + ".missing").status(),
              StatusIs(absl::StatusCode::kNotFound));
  std::remove(path.c_str());
}

// ------------------------------------------------------------- generator

GenerationRequest Request(absl::string_view text, uint64_t seed,
                          int32_t max_new = 24) {
  GenerationRequest r;
  r.prompt = Prompt(text);
  r.sampling.seed = seed;
  r.sampling.max_new_tokens = max_new;
  r.sampling.temperature = 1.0f;
  r.sampling.top_p = 0.95f;
  return r;
}

TEST(Generator, BatchedEqualsOneByOne) {
  auto model = SmallModel(2);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 6; ++i) {
    reqs.push_back(Request(std::string(10 + 7 * i, 'a' + i), 100 + i));
    reqs.back().return_routing = true;
  }
  reqs[3].sampling.temperature = 0;
  GeneratorOptions opts;
  opts.max_batch = 4;  // two decode groups
  opts.prefill_chunk = 16;
  opts.prefill_budget = 32;
  Generator batched(model.get(), opts);
  auto all = batched.Generate(reqs);
  ASSERT_THAT(all.status(), IsOk());
  Generator single(model.get());
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto one = single.Generate({&reqs[i], 1});
    ASSERT_THAT(one.status(), IsOk());
    const GenerationResult& a = (*all)[i];
    const GenerationResult& b = (*one)[0];
    EXPECT_EQ(a.tokens, b.tokens) << i;
    EXPECT_EQ(a.finish, b.finish) << i;
    EXPECT_EQ(a.text, Tokenizer().Decode(a.tokens));
    ASSERT_EQ(a.routing.size(), a.tokens.size());
    ASSERT_EQ(b.routing.size(), b.tokens.size());
    for (size_t t = 0; t < a.routing.size(); ++t) {
      EXPECT_EQ(a.routing[t].experts, b.routing[t].experts);
      EXPECT_EQ(a.routing[t].weights, b.routing[t].weights);
    }
    EXPECT_FALSE(a.tokens.empty());
    if (a.finish == GenerationResult::Finish::kLength) {
      EXPECT_EQ(a.tokens.size(), 24u);
    }
  }
}

TEST(Generator, RoutingMatchesForwardOfTheSequence) {
  auto model = SmallModel();
  const ModelConfig& c = model->config();
  GenerationRequest req = Request("routing", 5, 10);
  req.return_routing = true;
  req.sampling.stop_at_tool_calls_close = false;
  Generator gen(model.get());
  auto res = gen.Generate({&req, 1});
  ASSERT_THAT(res.status(), IsOk());
  const GenerationResult& r = (*res)[0];
  ASSERT_EQ(r.routing.size(), r.tokens.size());
  // Routing of generated token i = routing at position prompt - 1 + i.
  std::vector<int32_t> seq = req.prompt;
  seq.insert(seq.end(), r.tokens.begin(), r.tokens.end() - 1);
  KvCache cache(c);
  ForwardSegment s{&cache, seq};
  auto f = model->Forward({&s, 1});
  ASSERT_THAT(f.status(), IsOk());
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    const TokenRouting& tr = r.routing[i];
    ASSERT_EQ(tr.experts.size(), static_cast<size_t>(c.layers));
    const int64_t pos = req.prompt.size() - 1 + i;
    for (int l = 0; l < c.layers; ++l) {
      ASSERT_EQ(tr.experts[l].size(), static_cast<size_t>(c.moe.top_k));
      ASSERT_EQ(tr.weights[l].size(), static_cast<size_t>(c.moe.top_k));
      for (int j = 0; j < c.moe.top_k; ++j) {
        EXPECT_EQ(tr.experts[l][j],
                  f->routing[l].experts[pos * c.moe.top_k + j]);
        EXPECT_EQ(tr.weights[l][j],
                  f->routing[l].weights[pos * c.moe.top_k + j]);
      }
    }
  }
}

TEST(Generator, SessionCacheReuseGivesSameTokens) {
  auto model = SmallModel();
  Generator cached(model.get()), fresh(model.get());
  GenerationRequest r1 = Request("first turn of the episode", 11, 12);
  r1.session_id = "ep1";
  auto a1 = cached.Generate({&r1, 1});
  ASSERT_THAT(a1.status(), IsOk());
  EXPECT_EQ((*a1)[0].prefill_tokens, static_cast<int64_t>(r1.prompt.size()));
  // Next turn: previous prompt + generated + tool output.
  GenerationRequest r2 = r1;
  r2.prompt.insert(r2.prompt.end(), (*a1)[0].tokens.begin(),
                   (*a1)[0].tokens.end());
  const std::vector<int32_t> more = Tokenizer().Encode("<tool_result>ok");
  r2.prompt.insert(r2.prompt.end(), more.begin(), more.end());
  r2.sampling.seed = 12;
  auto a2 = cached.Generate({&r2, 1});
  ASSERT_THAT(a2.status(), IsOk());
  // Only the last generated token (never fed) and the new text.
  EXPECT_EQ((*a2)[0].prefill_tokens, static_cast<int64_t>(more.size() + 1));
  GenerationRequest r2b = r2;
  r2b.session_id = "";
  auto b2 = fresh.Generate({&r2b, 1});
  ASSERT_THAT(b2.status(), IsOk());
  EXPECT_EQ((*b2)[0].prefill_tokens, static_cast<int64_t>(r2.prompt.size()));
  EXPECT_EQ((*a2)[0].tokens, (*b2)[0].tokens);
  // A prompt that diverges reuses the common prefix only.
  GenerationRequest r3 = r1;
  r3.prompt.push_back('z');
  auto a3 = cached.Generate({&r3, 1});
  ASSERT_THAT(a3.status(), IsOk());
  EXPECT_EQ((*a3)[0].prefill_tokens, 1);
  r3.session_id = "";
  auto b3 = fresh.Generate({&r3, 1});
  ASSERT_THAT(b3.status(), IsOk());
  EXPECT_EQ((*a3)[0].tokens, (*b3)[0].tokens);
  EXPECT_EQ(cached.cached_sessions(), 1);
  cached.DropSession("ep1");
  EXPECT_EQ(cached.cached_sessions(), 0);
}

TEST(Generator, SessionsAreEvictedLeastRecentlyUsedFirst) {
  auto model = SmallModel();
  GeneratorOptions opts;
  opts.max_cached_sessions = 2;
  Generator gen(model.get(), opts);
  for (const char* id : {"a", "b", "c"}) {
    GenerationRequest r = Request(id, 1, 2);
    r.session_id = id;
    ASSERT_THAT(gen.Generate({&r, 1}).status(), IsOk());
  }
  EXPECT_EQ(gen.cached_sessions(), 2);
  GenerationRequest r = Request("a", 1, 2);
  r.session_id = "a";  // evicted: everything is prefilled again
  auto res = gen.Generate({&r, 1});
  ASSERT_THAT(res.status(), IsOk());
  EXPECT_EQ((*res)[0].prefill_tokens, static_cast<int64_t>(r.prompt.size()));
}

TEST(Generator, GreedyIsDeterministicAndTinyTopPIsArgmax) {
  auto model = SmallModel();
  Generator gen(model.get());
  GenerationRequest g = Request("greedy", 1, 20);
  g.sampling.temperature = 0;
  auto a = gen.Generate({&g, 1});
  g.sampling.seed = 999;  // irrelevant when greedy
  auto b = gen.Generate({&g, 1});
  GenerationRequest p = Request("greedy", 4242, 20);
  p.sampling.temperature = 1.5f;
  p.sampling.top_p = 1e-6f;
  auto c = gen.Generate({&p, 1});
  ASSERT_THAT(a.status(), IsOk());
  ASSERT_THAT(b.status(), IsOk());
  ASSERT_THAT(c.status(), IsOk());
  EXPECT_EQ((*a)[0].tokens, (*b)[0].tokens);
  EXPECT_EQ((*a)[0].tokens, (*c)[0].tokens);
  // Sampling at temperature 1 with different seeds differs somewhere.
  GenerationRequest s1 = Request("sample", 1, 20),
                    s2 = Request("sample", 2, 20);
  s1.sampling.top_p = s2.sampling.top_p = 1.0f;
  auto r1 = gen.Generate({&s1, 1});
  auto r2 = gen.Generate({&s2, 1});
  ASSERT_THAT(r1.status(), IsOk());
  ASSERT_THAT(r2.status(), IsOk());
  EXPECT_NE((*r1)[0].tokens, (*r2)[0].tokens);
}

TEST(Generator, SampleTokenRules) {
  std::vector<float> logits = {0.0f, 3.0f, 3.0f, -1.0f};
  SamplingParams p;
  p.temperature = 0;
  EXPECT_EQ(SampleToken(logits, p, 0), 1);  // ties to the lower id
  p.temperature = 1;
  p.top_p = 1e-6f;
  for (int step = 0; step < 20; ++step)
    EXPECT_EQ(SampleToken(logits, p, step), 1);
  p.top_p = 0.9f;  // {1, 2} hold ~0.93
  for (int step = 0; step < 50; ++step) {
    const int32_t t = SampleToken(logits, p, step);
    EXPECT_TRUE(t == 1 || t == 2) << t;
    EXPECT_EQ(t, SampleToken(logits, p, step));
  }
}

TEST(Generator, RejectsBadRequests) {
  auto model = SmallModel();
  Generator gen(model.get());
  GenerationRequest r = Request("x", 1, 2);
  r.prompt.clear();
  EXPECT_THAT(gen.Generate({&r, 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  r = Request("x", 1, 2);
  r.sampling.top_p = 0;
  EXPECT_THAT(gen.Generate({&r, 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  r = Request("x", 1, 2);
  r.prompt.push_back(-3);
  EXPECT_THAT(gen.Generate({&r, 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  r = Request("x", 1, 2);
  r.prompt.assign(512, 'a');
  EXPECT_THAT(gen.Generate({&r, 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  GenerationRequest two[] = {Request("a", 1, 2), Request("b", 1, 2)};
  two[0].session_id = two[1].session_id = "same";
  EXPECT_THAT(gen.Generate(two).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Generator, StopsAtMaxSeqLen) {
  auto model = SmallModel();
  Generator gen(model.get());
  GenerationRequest r = Request("", 3, 100);
  r.prompt.assign(505, 'a');
  r.sampling.temperature = 0;
  auto res = gen.Generate({&r, 1});
  ASSERT_THAT(res.status(), IsOk());
  if ((*res)[0].finish == GenerationResult::Finish::kLength) {
    EXPECT_EQ((*res)[0].tokens.size(), 7u);
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

constexpr size_t kWalHeader = 72, kWalRecord = 8;

TEST(Generator, WalResumeIsBitwiseIdentical) {
  auto model = SmallModel();
  const std::string wal = TempPath("resume.wal");
  std::remove(wal.c_str());
  GenerationRequest req = Request("write ahead", 77, 40);
  req.sampling.stop_at_tool_calls_close = false;
  req.wal_path = wal;
  req.return_routing = true;
  Generator gen(model.get());
  // Uninterrupted reference, no WAL.
  GenerationRequest plain = req;
  plain.wal_path.clear();
  auto ref = gen.Generate({&plain, 1});
  ASSERT_THAT(ref.status(), IsOk());
  const std::vector<int32_t>& want = (*ref)[0].tokens;
  ASSERT_GE(want.size(), 12u) << "pick a seed that generates more tokens";

  auto full = gen.Generate({&req, 1});
  ASSERT_THAT(full.status(), IsOk());
  EXPECT_EQ((*full)[0].tokens, want);
  EXPECT_EQ((*full)[0].resumed_tokens, 0);
  const std::string log = ReadFile(wal);
  ASSERT_EQ(log.size(), kWalHeader + want.size() * kWalRecord);

  struct Cut {
    size_t records;
    size_t torn_bytes;  // of the next record
    bool garbage;       // a full last record with a bad checksum
  };
  for (const Cut& cut :
       {Cut{0, 0, false}, Cut{5, 3, false}, Cut{9, 0, true},
        Cut{want.size() - 1, 7, false}, Cut{want.size(), 0, false}}) {
    std::string bytes =
        log.substr(0, kWalHeader + cut.records * kWalRecord + cut.torn_bytes);
    if (cut.garbage)
      bytes += std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    WriteFile(wal, bytes);
    Generator fresh(model.get());
    auto res = fresh.Generate({&req, 1});
    ASSERT_THAT(res.status(), IsOk());
    const GenerationResult& r = (*res)[0];
    EXPECT_EQ(r.tokens, want) << cut.records;
    EXPECT_EQ(r.finish, (*ref)[0].finish);
    EXPECT_EQ(r.resumed_tokens, static_cast<int64_t>(cut.records));
    ASSERT_EQ(r.routing.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(r.routing[i].experts, (*ref)[0].routing[i].experts) << i;
    }
    EXPECT_EQ(ReadFile(wal), log) << cut.records;
  }
  // A corrupt record before the last is data loss, not a silent restart.
  std::string bad = log;
  bad[kWalHeader + 2 * kWalRecord] ^= 0x40;
  WriteFile(wal, bad);
  EXPECT_THAT(gen.Generate({&req, 1}).status(),
              StatusIs(absl::StatusCode::kDataLoss));
  std::remove(wal.c_str());
}

TEST(Generator, WalMismatchIsFailedPrecondition) {
  auto model = SmallModel();
  const std::string wal = TempPath("mismatch.wal");
  std::remove(wal.c_str());
  GenerationRequest req = Request("one prompt", 1, 5);
  req.wal_path = wal;
  Generator gen(model.get());
  ASSERT_THAT(gen.Generate({&req, 1}).status(), IsOk());
  GenerationRequest other = req;
  other.sampling.seed = 2;
  EXPECT_THAT(
      gen.Generate({&other, 1}).status(),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("sampling")));
  other = req;
  other.prompt.push_back('!');
  EXPECT_THAT(
      gen.Generate({&other, 1}).status(),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("prompt")));
  auto model2 = SmallModel(1, 2);
  Generator gen2(model2.get());
  EXPECT_THAT(
      gen2.Generate({&req, 1}).status(),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("model")));
  WriteFile(wal, std::string(100, 'x'));
  EXPECT_THAT(gen.Generate({&req, 1}).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  std::remove(wal.c_str());
}

// ------------------------------------------------------- prefix sharing

// A system prompt of 1 + 150 tokens (not a multiple of the 16-token index
// blocks) that every request below starts with.
const std::string& SystemText() {
  static const std::string* text = [] {
    std::string t;
    while (t.size() < 150) t += "You are a careful agent; tools: run, read. ";
    t.resize(150);
    return new std::string(t);
  }();
  return *text;
}

GenerationRequest SharedRequest(absl::string_view user, uint64_t seed,
                                int32_t max_new = 24) {
  return Request(absl::StrCat(SystemText(), user), seed, max_new);
}

int64_t CommonLength(const std::vector<int32_t>& a,
                     const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

// The reference: the request alone, nothing cached, nothing shared.
GenerationResult Alone(Model* model, GenerationRequest r) {
  r.session_id.clear();
  r.wal_path.clear();
  Generator gen(model);
  auto res = gen.Generate({&r, 1});
  EXPECT_THAT(res.status(), IsOk());
  return res.ok() ? (*res)[0] : GenerationResult{};
}

void ExpectSameGeneration(const GenerationResult& got,
                          const GenerationResult& want, int where) {
  EXPECT_EQ(got.tokens, want.tokens) << where;
  EXPECT_EQ(got.finish, want.finish) << where;
  ASSERT_EQ(got.routing.size(), want.routing.size()) << where;
  for (size_t t = 0; t < got.routing.size(); ++t) {
    EXPECT_EQ(got.routing[t].experts, want.routing[t].experts) << where;
    EXPECT_EQ(got.routing[t].weights, want.routing[t].weights) << where;
  }
}

TEST(Generator, NewSessionCopiesTheCommonPrefixOfACachedOne) {
  auto model = SmallModel(2);
  Generator gen(model.get());
  GenerationRequest donor = SharedRequest("Question one: list files.", 1);
  donor.session_id = "donor";
  auto d = gen.Generate({&donor, 1});
  ASSERT_THAT(d.status(), IsOk());
  EXPECT_EQ((*d)[0].shared_prefix_tokens, 0);
  EXPECT_EQ((*d)[0].prefill_tokens, static_cast<int64_t>(donor.prompt.size()));

  char first = 'A';  // each user message differs from all before it
  for (float temperature : {1.0f, 0.0f}) {
    for (bool routing : {false, true}) {
      GenerationRequest r = SharedRequest(
          absl::StrCat(std::string(1, first++), "nother question"),
          40 + routing);
      r.session_id = absl::StrCat("s", temperature, routing);
      r.sampling.temperature = temperature;
      r.return_routing = routing;
      const int64_t common = CommonLength(r.prompt, donor.prompt);
      ASSERT_EQ(common, 1 + static_cast<int64_t>(SystemText().size()));
      auto res = gen.Generate({&r, 1});
      ASSERT_THAT(res.status(), IsOk());
      const GenerationResult& got = (*res)[0];
      EXPECT_EQ(got.shared_prefix_tokens, common);
      EXPECT_EQ(got.prefill_tokens,
                static_cast<int64_t>(r.prompt.size()) - common);
      ExpectSameGeneration(got, Alone(model.get(), r), routing);
    }
  }
  // A request without a session shares too.
  GenerationRequest anon = SharedRequest("No session here.", 9);
  auto res = gen.Generate({&anon, 1});
  ASSERT_THAT(res.status(), IsOk());
  EXPECT_EQ((*res)[0].shared_prefix_tokens,
            CommonLength(anon.prompt, donor.prompt));
  ExpectSameGeneration((*res)[0], Alone(model.get(), anon), 0);
  // Disabled: everything is computed, with the same result.
  GeneratorOptions off;
  off.share_prefixes = false;
  Generator plain(model.get(), off);
  ASSERT_THAT(plain.Generate({&donor, 1}).status(), IsOk());
  auto p = plain.Generate({&anon, 1});
  ASSERT_THAT(p.status(), IsOk());
  EXPECT_EQ((*p)[0].shared_prefix_tokens, 0);
  EXPECT_EQ((*p)[0].prefill_tokens, static_cast<int64_t>(anon.prompt.size()));
  EXPECT_EQ((*p)[0].tokens, (*res)[0].tokens);
}

TEST(Generator, OneCallPrefillsASharedPrefixOnce) {
  auto model = SmallModel(2);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 7; ++i) {
    reqs.push_back(
        SharedRequest(absl::StrCat(std::string(1, 'a' + i), " user message ",
                                   std::string(5 + 9 * i, 'x')),
                      200 + i));
    reqs.back().session_id = absl::StrCat("ep", i);
  }
  reqs[2].sampling.temperature = 0;
  reqs[4].return_routing = true;
  reqs.push_back(reqs[1]);  // the same prompt twice
  reqs.back().session_id = "twin";
  reqs.back().sampling.seed = 7;
  reqs.push_back(Request("unrelated prompt", 300));  // no session, no share
  GeneratorOptions opts;
  opts.max_batch = 4;
  opts.prefill_chunk = 16;  // the leader needs several forwards
  opts.prefill_budget = 40;
  Generator gen(model.get(), opts);
  auto all = gen.Generate(reqs);
  ASSERT_THAT(all.status(), IsOk());
  const int64_t system = 1 + SystemText().size();
  int64_t prefilled = 0, total = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const GenerationResult& got = (*all)[i];
    ExpectSameGeneration(got, Alone(model.get(), reqs[i]), i);
    prefilled += got.prefill_tokens;
    total += reqs[i].prompt.size();
    EXPECT_EQ(got.prefill_tokens + got.shared_prefix_tokens,
              static_cast<int64_t>(reqs[i].prompt.size()))
        << i;
  }
  EXPECT_EQ((*all)[0].shared_prefix_tokens, 0);
  for (int i = 1; i < 7; ++i) {
    EXPECT_EQ((*all)[i].shared_prefix_tokens, system) << i;
  }
  // The twin shares all but the last prompt token (its logits).
  EXPECT_EQ((*all)[7].shared_prefix_tokens,
            static_cast<int64_t>(reqs[7].prompt.size()) - 1);
  EXPECT_EQ((*all)[8].shared_prefix_tokens, 0);
  EXPECT_EQ(prefilled, total - 6 * system - (reqs[7].prompt.size() - 1));
  // Next turns keep their own caches (no copy needed).
  for (size_t i = 0; i < 7; ++i) {
    reqs[i].prompt.insert(reqs[i].prompt.end(), (*all)[i].tokens.begin(),
                          (*all)[i].tokens.end());
    reqs[i].prompt.push_back('!');
  }
  reqs.resize(7);
  auto next = gen.Generate(reqs);
  ASSERT_THAT(next.status(), IsOk());
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ((*next)[i].shared_prefix_tokens, 0) << i;
    EXPECT_EQ((*next)[i].prefill_tokens, 2) << i;
    ExpectSameGeneration((*next)[i], Alone(model.get(), reqs[i]), i);
  }
}

TEST(Generator, EvictingTheDonorLeavesCopiesIntact) {
  auto model = SmallModel();
  GeneratorOptions opts;
  opts.max_cached_sessions = 1;  // each call evicts the previous session
  Generator gen(model.get(), opts);
  GenerationRequest a = SharedRequest("first episode", 1);
  a.session_id = "a";
  ASSERT_THAT(gen.Generate({&a, 1}).status(), IsOk());
  GenerationRequest b = SharedRequest("second episode", 2);
  b.session_id = "b";
  auto rb = gen.Generate({&b, 1});  // copies from a, then a is evicted
  ASSERT_THAT(rb.status(), IsOk());
  EXPECT_GT((*rb)[0].shared_prefix_tokens, 0);
  EXPECT_EQ(gen.cached_sessions(), 1);
  // b's next turn runs on its copy.
  b.prompt.insert(b.prompt.end(), (*rb)[0].tokens.begin(),
                  (*rb)[0].tokens.end());
  b.prompt.push_back('?');
  b.sampling.seed = 3;
  auto rb2 = gen.Generate({&b, 1});
  ASSERT_THAT(rb2.status(), IsOk());
  EXPECT_EQ((*rb2)[0].prefill_tokens, 2);
  ExpectSameGeneration((*rb2)[0], Alone(model.get(), b), 0);
  // Dropped explicitly, b no longer donates; a new session computes all.
  gen.DropSession("b");
  GenerationRequest c = SharedRequest("third episode", 4);
  c.session_id = "c";
  auto rc = gen.Generate({&c, 1});
  ASSERT_THAT(rc.status(), IsOk());
  EXPECT_EQ((*rc)[0].shared_prefix_tokens, 0);
  EXPECT_EQ((*rc)[0].prefill_tokens, static_cast<int64_t>(c.prompt.size()));
  // Within one call a leader evicted at its end still served its followers.
  GenerationRequest d = SharedRequest("fourth episode", 5),
                    e = SharedRequest("fifth episode", 6);
  d.session_id = "d";
  e.session_id = "e";
  std::vector<GenerationRequest> de = {d, e};
  GeneratorOptions none = opts;
  none.max_cache_bytes = 0;  // nothing stays cached
  Generator tight(model.get(), none);
  auto rde = tight.Generate(de);
  ASSERT_THAT(rde.status(), IsOk());
  EXPECT_EQ(tight.cached_sessions(), 0);
  EXPECT_GT((*rde)[1].shared_prefix_tokens, 0);
  ExpectSameGeneration((*rde)[0], Alone(model.get(), d), 0);
  ExpectSameGeneration((*rde)[1], Alone(model.get(), e), 1);
}

TEST(Generator, WalResumeWithASharedPrefixIsBitwiseIdentical) {
  auto model = SmallModel();
  const std::string wal = TempPath("shared.wal");
  std::remove(wal.c_str());
  GenerationRequest donor = SharedRequest("donor question", 1);
  donor.session_id = "donor";
  GenerationRequest req = SharedRequest("resumed question", 77, 40);
  req.sampling.stop_at_tool_calls_close = false;
  req.session_id = "resumed";
  req.wal_path = wal;
  req.return_routing = true;
  const GenerationResult want = Alone(model.get(), req);
  ASSERT_GE(want.tokens.size(), 12u);
  {
    Generator gen(model.get());
    ASSERT_THAT(gen.Generate({&donor, 1}).status(), IsOk());
    auto full = gen.Generate({&req, 1});
    ASSERT_THAT(full.status(), IsOk());
    EXPECT_GT((*full)[0].shared_prefix_tokens, 0);
    ExpectSameGeneration((*full)[0], want, -1);
  }
  const std::string log = ReadFile(wal);
  ASSERT_EQ(log.size(), kWalHeader + want.tokens.size() * kWalRecord);
  for (size_t records :
       {size_t{0}, size_t{5}, want.tokens.size() - 1, want.tokens.size()}) {
    WriteFile(wal, log.substr(0, kWalHeader + records * kWalRecord));
    Generator gen(model.get());
    ASSERT_THAT(gen.Generate({&donor, 1}).status(), IsOk());
    auto res = gen.Generate({&req, 1});
    ASSERT_THAT(res.status(), IsOk());
    const GenerationResult& r = (*res)[0];
    EXPECT_EQ(r.resumed_tokens, static_cast<int64_t>(records));
    EXPECT_EQ(r.shared_prefix_tokens, CommonLength(req.prompt, donor.prompt));
    ExpectSameGeneration(r, want, records);
    EXPECT_EQ(ReadFile(wal), log) << records;
  }
  std::remove(wal.c_str());
}

// Not a check: prints prefill tokens and time for 64 new sessions that
// share a 4,500-token system prompt (+ 300 tokens each, 32 new tokens), with
// and without prefix sharing, on the worker's TinyConfig with 2 threads.
// Run with --gtest_also_run_disabled_tests --gtest_filter='*SharedPrefix*'.
TEST(Generator, DISABLED_SharedPrefixThroughput) {
  ModelRunOptions run;
  run.threads = 2;
  auto model = Model::Random(TinyConfig(), 1, run);
  ASSERT_THAT(model.status(), IsOk());
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> byte(0, 255);
  std::vector<int32_t> system(4500);
  for (int32_t& t : system) t = byte(rng);
  system[0] = Tokenizer().bos();
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 64; ++i) {
    GenerationRequest r;
    r.prompt = system;
    for (int j = 0; j < 300; ++j) r.prompt.push_back(byte(rng));
    r.session_id = absl::StrCat("ep", i);
    r.sampling.max_new_tokens = 32;
    r.sampling.stop_at_tool_calls_close = false;
    r.sampling.seed = i;
    reqs.push_back(std::move(r));
  }
  std::vector<int32_t> first;
  for (bool share : {false, true}) {
    GeneratorOptions opts;
    opts.share_prefixes = share;
    Generator gen(model->get(), opts);
    const auto t0 = std::chrono::steady_clock::now();
    auto res = gen.Generate(reqs);
    ASSERT_THAT(res.status(), IsOk());
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    int64_t prefill = 0, shared = 0, generated = 0;
    for (const GenerationResult& r : *res) {
      prefill += r.prefill_tokens;
      shared += r.shared_prefix_tokens;
      generated += r.tokens.size();
    }
    if (first.empty()) first = (*res)[63].tokens;
    EXPECT_EQ((*res)[63].tokens, first);
    std::printf(
        "share_prefixes=%d: %lld prefilled, %lld shared, %lld generated, "
        "%.2f s\n",
        share, static_cast<long long>(prefill), static_cast<long long>(shared),
        static_cast<long long>(generated), s);
  }
}

// Not a check: prints throughput of the worker's TinyConfig. Run with
// --gtest_also_run_disabled_tests --gtest_filter='*Throughput*'.
TEST(Generator, DISABLED_Throughput) {
  auto model = Model::Random(TinyConfig(), 1);
  ASSERT_THAT(model.status(), IsOk());
  using Clock = std::chrono::steady_clock;
  std::vector<int> batches = {1, 64};
  if (const char* only = std::getenv("POLICY_BENCH_BATCH")) {
    batches = {std::atoi(only)};
  }
  for (int batch : batches) {
    Generator gen(model->get());
    std::vector<GenerationRequest> reqs;
    for (int i = 0; i < batch; ++i) {
      GenerationRequest r;
      r.prompt.assign(3000, 'a' + i % 26);
      r.prompt[0] = Tokenizer().bos();
      r.prompt[1] = i;  // no two alike: nothing to share
      r.session_id = absl::StrCat("s", i);
      r.sampling.max_new_tokens = 1;
      reqs.push_back(r);
    }
    auto t0 = Clock::now();
    ASSERT_THAT(gen.Generate(reqs).status(), IsOk());
    const double prefill =
        std::chrono::duration<double>(Clock::now() - t0).count();
    for (auto& r : reqs) {
      r.sampling.max_new_tokens = 64;
      r.sampling.stop_at_tool_calls_close = false;
      r.sampling.temperature = 0;
    }
    t0 = Clock::now();
    auto res = gen.Generate(reqs);
    ASSERT_THAT(res.status(), IsOk());
    const double decode =
        std::chrono::duration<double>(Clock::now() - t0).count();
    int64_t n = 0, pre = 0;
    for (const auto& r : *res) n += r.tokens.size(), pre += r.prefill_tokens;
    std::printf(
        "batch %d: prefill %.0f tok/s (%d x 3000 in %.3f s); decode "
        "%.0f tok/s (%lld tokens, %lld re-prefilled, %.3f s)\n",
        batch, batch * 3000 / prefill, batch, prefill, n / decode,
        static_cast<long long>(n), static_cast<long long>(pre), decode);
  }
}

}  // namespace
}  // namespace dsec::policy
