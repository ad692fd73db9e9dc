// DSML parsing and rendering.
//
// Invariants of the parser (StreamParser::Machine):
//   - One state machine serves Parse (all input, final) and StreamParser
//     (growing input); each state looks only at input[pos_..] and either
//     consumes a whole element, waits for more bytes, or stops.
//   - A decision never depends on where the chunks were split: a tag is
//     accepted or rejected only once enough bytes are there to tell, an
//     error's "found '...'" snippet only once its bytes are all there (a
//     full snippet, a line break, or the end of the text), and truncation
//     only at the end of the text. Hence streaming == Parse.
//   - Content is emitted as soon as it cannot be part of "<｜DSML｜" and
//     does not end inside a UTF-8 sequence.
//   - Searches resume where the last one stopped (scan_), so feeding a
//     long value in small chunks stays linear.
#include "client/dsml.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace dsec::client::dsml {
namespace {

constexpr absl::string_view kMarker = "<｜DSML｜";
constexpr absl::string_view kOpenV4 = "<｜DSML｜tool_calls>";
constexpr absl::string_view kCloseV4 = "</｜DSML｜tool_calls>";
constexpr absl::string_view kOpenV32 = "<｜DSML｜function_calls>";
constexpr absl::string_view kCloseV32 = "</｜DSML｜function_calls>";
constexpr absl::string_view kInvokeOpen = "<｜DSML｜invoke name=\"";
constexpr absl::string_view kInvokeOpenEnd = "\">";
constexpr absl::string_view kInvokeClose = "</｜DSML｜invoke>";
constexpr absl::string_view kParamOpen = "<｜DSML｜parameter name=\"";
constexpr absl::string_view kParamString = "\" string=\"true\">";
constexpr absl::string_view kParamJson = "\" string=\"false\">";
constexpr absl::string_view kParamClose = "</｜DSML｜parameter>";
static_assert(kMarker.size() == 11, "the bar must be U+FF5C in UTF-8");

// Bytes shown after "found" in an error.
constexpr size_t kSnippetBytes = 32;
// Deeper JSON is refused: nlohmann's dump and operator== recurse.
constexpr int kMaxJsonDepth = 512;

bool IsWs(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool IsContinuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the well-formed UTF-8 sequence at s[i], 0 if there is none
// (invalid, or cut off by the end of `s`).
size_t Utf8Len(absl::string_view s, size_t i) {
  auto at = [&](size_t k) -> unsigned char {
    return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0;
  };
  unsigned char b = at(0);
  if (b < 0x80) return i < s.size() ? 1 : 0;
  unsigned char lo = 0x80, hi = 0xBF;
  size_t n;
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (at(1) < lo || at(1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (!IsContinuation(at(k))) return 0;
  }
  return n;
}

// Whether the 8 bytes at `p` are all ASCII (the fast path of validation).
bool AllAscii8(const char* p) {
  uint64_t word;
  std::memcpy(&word, p, sizeof word);
  return (word & 0x8080808080808080u) == 0;
}

// Offset of the first byte of `s` that is not well-formed UTF-8, or npos.
size_t FindInvalidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    while (i + 8 <= s.size() && AllAscii8(s.data() + i)) i += 8;
    if (i == s.size()) break;
    size_t n = Utf8Len(s, i);
    if (n == 0) return i;
    i += n;
  }
  return absl::string_view::npos;
}

// `s` with bytes that are not UTF-8 text, and controls when `controls`,
// written as \xNN: error messages must be valid text.
std::string Escape(absl::string_view s, bool controls) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = Utf8Len(s, i);
    unsigned char b = static_cast<unsigned char>(s[i]);
    if (n == 0 || (controls && (b < 0x20 || b == 0x7F))) {
      absl::StrAppendFormat(&out, "\\x%02X", b);
      ++i;
    } else {
      absl::StrAppend(&out, s.substr(i, n));
      i += n;
    }
  }
  return out;
}

// "line L, col C" of a byte offset; the column counts characters.
std::pair<int, int> LineCol(absl::string_view in, size_t offset) {
  offset = std::min(offset, in.size());
  int line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < offset; ++i) {
    if (in[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  int col = 1;
  for (size_t i = line_start; i < offset; ++i) {
    if (!IsContinuation(static_cast<unsigned char>(in[i]))) ++col;
  }
  return {line, col};
}

std::string At(absl::string_view in, size_t offset) {
  auto [line, col] = LineCol(in, offset);
  return absl::StrCat("line ", line, ", col ", col);
}

std::string Quote(absl::string_view s) { return absl::StrCat("'", s, "'"); }

size_t BackOffIncompleteUtf8(absl::string_view in, size_t from, size_t end);

// What an error says was found at `pos`, or nullopt while more input could
// still change it.
std::optional<std::string> Found(absl::string_view in, size_t pos, bool final) {
  size_t end = pos;
  while (end < in.size() && end - pos < kSnippetBytes && in[end] != '\n') {
    ++end;
  }
  bool cut = end - pos == kSnippetBytes;
  if (!cut && end == in.size() && !final) return std::nullopt;
  if (end == pos) {
    return std::string(end < in.size() ? "a line break" : "the end");
  }
  if (cut) end = BackOffIncompleteUtf8(in, pos, end);
  return absl::StrCat("'", Escape(in.substr(pos, end - pos), true),
                      cut ? "...'" : "'");
}

enum class MatchKind { kHit, kMore, kTruncated, kMiss };
struct Match {
  MatchKind kind;
  size_t index = 0;  // of the literal hit
  size_t size = 0;   // its length
};

// Which of `literals` the input at `pos` starts with. kMore / kTruncated
// when what is there is a proper prefix of one of them (more may come /
// the text ended).
Match MatchAny(absl::string_view in, size_t pos, bool final,
               std::initializer_list<absl::string_view> literals) {
  absl::string_view rest = in.substr(pos);
  bool partial = false;
  size_t index = 0;
  for (absl::string_view lit : literals) {
    if (absl::StartsWith(rest, lit)) {
      return {MatchKind::kHit, index, lit.size()};
    }
    if (absl::StartsWith(lit, rest)) partial = true;
    ++index;
  }
  if (partial) return {final ? MatchKind::kTruncated : MatchKind::kMore};
  return {MatchKind::kMiss};
}

// Length of the longest proper prefix of kMarker that `in` ends with.
size_t HeldMarkerPrefix(absl::string_view in) {
  for (size_t k = std::min(in.size(), kMarker.size() - 1); k > 0; --k) {
    if (absl::EndsWith(in, kMarker.substr(0, k))) return k;
  }
  return 0;
}

// `end` moved back so that in[from, end) does not end inside a UTF-8
// sequence that later bytes may complete.
size_t BackOffIncompleteUtf8(absl::string_view in, size_t from, size_t end) {
  for (size_t j = end; j > from && end - j < 4;) {
    --j;
    unsigned char b = static_cast<unsigned char>(in[j]);
    if (IsContinuation(b)) continue;
    size_t need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
    return need > end - j ? j : end;
  }
  return end;
}

// Nesting depth check before nlohmann sees the value: npos if fine, else
// the offset of the bracket that goes too deep.
size_t FindTooDeep(absl::string_view json) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return i;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return absl::string_view::npos;
}

}  // namespace

// The grammar of dsml.h as a resumable state machine over a growing input.
class StreamParser::Machine {
 public:
  // Advances over `in` (the whole input so far; it only ever grows), adding
  // what becomes known to `out`. `final`: no more input will come.
  void Run(absl::string_view in, bool final, ParseResult& out) {
    while (state_ != State::kStopped) {
      Step step = Advance(in, final, out);
      if (step == Step::kWait) {
        if (!final) return;
        // Every state stops on final input; this guards the guarantee.
        Fail(in, in.size(), "internal error: the DSML parser stalled", out);
      }
    }
  }
  bool block_closed() const { return closed_; }
  bool stopped() const { return state_ == State::kStopped; }

 private:
  enum class State {
    kContent,
    kOpen,
    kBetween,
    kInvokeName,
    kInInvoke,
    kParamName,
    kParamValue,
    kAfter,
    kStopped,
  };
  enum class Step { kContinue, kWait, kStop };

  Step Advance(absl::string_view in, bool final, ParseResult& out) {
    switch (state_) {
      case State::kContent:
        return Content(in, final, out);
      case State::kOpen:
        return Open(in, final, out);
      case State::kBetween:
        return Between(in, final, out);
      case State::kInvokeName:
        return InvokeName(in, final, out);
      case State::kInInvoke:
        return InInvoke(in, final, out);
      case State::kParamName:
        return ParamName(in, final, out);
      case State::kParamValue:
        return ParamValue(in, final, out);
      case State::kAfter:
        return After(in, final, out);
      case State::kStopped:
        break;
    }
    return Step::kStop;
  }

  Step Fail(absl::string_view in, size_t offset, std::string message,
            ParseResult& out) {
    auto [line, col] = LineCol(in, offset);
    out.error = ParseError{offset, line, col, Escape(message, false)};
    state_ = State::kStopped;
    return Step::kStop;
  }

  // Fails with "<expected()>, but found '...'" (or "..., but the text
  // ended") for a match that was not a hit, or waits until the snippet is
  // known. `expected` is only called on failure: messages cite line and
  // column, which cost a scan of the input.
  template <typename MessageFn>
  Step Expected(absl::string_view in, size_t pos, bool final, Match m,
                const MessageFn& expected, ParseResult& out) {
    if (m.kind == MatchKind::kMore) return Step::kWait;
    if (m.kind == MatchKind::kTruncated) {
      return Fail(in, pos, absl::StrCat(expected(), ", but the text ended"),
                  out);
    }
    std::optional<std::string> found = Found(in, pos, final);
    if (!found) return Step::kWait;
    return Fail(in, pos, absl::StrCat(expected(), ", but found ", *found), out);
  }

  void SkipWs(absl::string_view in) {
    while (pos_ < in.size() && IsWs(in[pos_])) ++pos_;
  }

  absl::string_view Wrapper() const {
    return v32_ ? "function_calls" : "tool_calls";
  }
  absl::string_view Close() const { return v32_ ? kCloseV32 : kCloseV4; }

  Step Content(absl::string_view in, bool final, ParseResult& out) {
    size_t m = in.find(kMarker, pos_);
    if (m != absl::string_view::npos) {
      absl::StrAppend(&out.content, in.substr(pos_, m - pos_));
      pos_ = m;
      state_ = State::kOpen;
      return Step::kContinue;
    }
    if (final) {
      absl::StrAppend(&out.content, in.substr(pos_));
      pos_ = in.size();
      state_ = State::kStopped;
      return Step::kStop;
    }
    size_t safe = in.size() - HeldMarkerPrefix(in);
    safe = std::max(pos_, BackOffIncompleteUtf8(in, pos_, safe));
    absl::StrAppend(&out.content, in.substr(pos_, safe - pos_));
    pos_ = safe;
    return Step::kWait;
  }

  Step Open(absl::string_view in, bool final, ParseResult& out) {
    Match m = MatchAny(in, pos_, final, {kOpenV4, kOpenV32});
    if (m.kind != MatchKind::kHit) {
      return Expected(
          in, pos_, final, m,
          [&] {
            return absl::StrCat("expected ", Quote(kOpenV4), " (or ",
                                Quote(kOpenV32),
                                ") to open the tool-call block, the only "
                                "thing '<｜DSML｜' may start");
          },
          out);
    }
    v32_ = m.index == 1;
    block_at_ = pos_;
    pos_ += m.size;
    state_ = State::kBetween;
    return Step::kContinue;
  }

  Step Between(absl::string_view in, bool final, ParseResult& out) {
    SkipWs(in);
    Match m = MatchAny(in, pos_, final, {kInvokeOpen, Close()});
    if (m.kind == MatchKind::kHit && m.index == 0) {
      invoke_at_ = pos_;
      pos_ += m.size;
      scan_ = pos_;
      state_ = State::kInvokeName;
      return Step::kContinue;
    }
    if (m.kind == MatchKind::kHit && calls_ == 0) {
      return Fail(in, pos_,
                  absl::StrCat("the ", Wrapper(), " block opened at ",
                               At(in, block_at_), " has no call: expected ",
                               Quote(kInvokeOpen), " before ", Quote(Close())),
                  out);
    }
    if (m.kind == MatchKind::kHit) {
      closed_ = true;
      close_at_ = pos_;
      pos_ += m.size;
      state_ = State::kAfter;
      return Step::kContinue;
    }
    return Expected(
        in, pos_, final, m,
        [&] {
          return absl::StrCat("expected ", Quote(kInvokeOpen), " or ",
                              Quote(Close()), " in the ", Wrapper(),
                              " block opened at ", At(in, block_at_));
        },
        out);
  }

  // What the NAME being read belongs to, for messages.
  std::string NameOf(absl::string_view in) const {
    return state_ == State::kInvokeName
               ? absl::StrCat("the tool name of the invoke opened at ",
                              At(in, invoke_at_))
               : absl::StrCat("the name of the parameter opened at ",
                              At(in, param_at_));
  }

  // Reads a NAME that starts at pos_ up to its closing quote, which is left
  // at `quote`. kContinue when `name` is complete and valid.
  Step ReadName(absl::string_view in, bool final, std::string& name,
                size_t& quote, ParseResult& out) {
    size_t i = scan_;
    while (i < in.size()) {
      unsigned char c = static_cast<unsigned char>(in[i]);
      if (c == '"' || c == '<' || c == '>' || c < 0x20 || c == 0x7F) break;
      ++i;
    }
    scan_ = i;
    auto expected = [&] {
      return absl::StrCat("expected '\"' to end ", NameOf(in));
    };
    if (i == in.size()) {
      if (!final) return Step::kWait;
      return Fail(in, i, absl::StrCat(expected(), ", but the text ended"), out);
    }
    if (in[i] != '"') {
      return Expected(in, i, final, {MatchKind::kMiss}, expected, out);
    }
    if (i == pos_) {
      return Fail(in, pos_, absl::StrCat(NameOf(in), " is empty"), out);
    }
    absl::string_view raw = in.substr(pos_, i - pos_);
    size_t bad = FindInvalidUtf8(raw);
    if (bad != absl::string_view::npos) {
      return Fail(in, pos_ + bad,
                  absl::StrCat(NameOf(in), " is not valid UTF-8"), out);
    }
    name.assign(raw.data(), raw.size());
    quote = i;
    return Step::kContinue;
  }

  Step InvokeName(absl::string_view in, bool final, ParseResult& out) {
    std::string name;
    size_t quote;
    Step step = ReadName(in, final, name, quote, out);
    if (step != Step::kContinue) return step;
    Match m = MatchAny(in, quote, final, {kInvokeOpenEnd});
    if (m.kind != MatchKind::kHit) {
      return Expected(
          in, quote, final, m,
          [&] {
            return absl::StrCat("expected ", Quote(kInvokeOpenEnd),
                                " after the tool name \"", name, "\"");
          },
          out);
    }
    call_ = ToolCall{std::move(name), {}};
    param_offsets_.clear();
    pos_ = quote + m.size;
    state_ = State::kInInvoke;
    return Step::kContinue;
  }

  Step InInvoke(absl::string_view in, bool final, ParseResult& out) {
    SkipWs(in);
    Match m = MatchAny(in, pos_, final, {kParamOpen, kInvokeClose});
    if (m.kind != MatchKind::kHit) {
      return Expected(
          in, pos_, final, m,
          [&] {
            return absl::StrCat("expected ", Quote(kParamOpen), " or ",
                                Quote(kInvokeClose), " in invoke \"",
                                call_.name, "\" opened at ",
                                At(in, invoke_at_));
          },
          out);
    }
    if (m.index == 0) {
      param_at_ = pos_;
      pos_ += m.size;
      scan_ = pos_;
      state_ = State::kParamName;
      return Step::kContinue;
    }
    out.calls.push_back(std::move(call_));
    call_ = ToolCall{};
    ++calls_;
    pos_ += m.size;
    state_ = State::kBetween;
    return Step::kContinue;
  }

  Step ParamName(absl::string_view in, bool final, ParseResult& out) {
    std::string name;
    size_t quote;
    Step step = ReadName(in, final, name, quote, out);
    if (step != Step::kContinue) return step;
    Match m = MatchAny(in, quote, final, {kParamString, kParamJson});
    if (m.kind != MatchKind::kHit) {
      return Expected(
          in, quote, final, m,
          [&] {
            return absl::StrCat("expected ", Quote(kParamString), " or ",
                                Quote(kParamJson), " after parameter name \"",
                                name, "\"");
          },
          out);
    }
    for (size_t k = 0; k < call_.params.size(); ++k) {
      if (call_.params[k].name == name) {
        return Fail(in, param_at_,
                    absl::StrCat("parameter \"", name,
                                 "\" appears twice in "
                                 "invoke \"",
                                 call_.name, "\" (first at ",
                                 At(in, param_offsets_[k]), ")"),
                    out);
      }
    }
    param_ = Parameter{std::move(name), m.index == 0, {}, {}};
    pos_ = quote + m.size;
    scan_ = pos_;
    state_ = State::kParamValue;
    return Step::kContinue;
  }

  Step ParamValue(absl::string_view in, bool final, ParseResult& out) {
    size_t close = in.find(kParamClose, scan_);
    if (close == absl::string_view::npos) {
      if (final) {
        return Fail(
            in, in.size(),
            absl::StrCat("expected ", Quote(kParamClose),
                         " to close parameter \"", param_.name, "\" opened at ",
                         At(in, param_at_), ", but the text ended"),
            out);
      }
      size_t keep = kParamClose.size() - 1;
      scan_ = std::max(pos_, in.size() > keep ? in.size() - keep : 0);
      return Step::kWait;
    }
    absl::string_view raw = in.substr(pos_, close - pos_);
    if (param_.is_string) {
      size_t bad = FindInvalidUtf8(raw);
      if (bad != absl::string_view::npos) {
        return Fail(
            in, pos_ + bad,
            absl::StrFormat("the value of parameter \"%s\" is not "
                            "valid UTF-8 text (byte 0x%02X)",
                            param_.name, static_cast<unsigned char>(raw[bad])),
            out);
      }
      param_.value = std::string(raw);
    } else {
      size_t deep = FindTooDeep(raw);
      if (deep != absl::string_view::npos) {
        return Fail(
            in, pos_ + deep,
            absl::StrCat("the JSON value of parameter \"", param_.name,
                         "\" is nested deeper than ", kMaxJsonDepth, " levels"),
            out);
      }
      try {
        param_.value = nlohmann::json::parse(raw.begin(), raw.end());
      } catch (const nlohmann::json::parse_error& e) {
        std::string what = e.what();
        size_t colon = what.find(": ", what.find(']'));
        std::string why =
            colon == std::string::npos ? what : what.substr(colon + 2);
        size_t at =
            pos_ + std::min<size_t>(raw.size(), e.byte > 0 ? e.byte - 1 : 0);
        return Fail(in, at,
                    absl::StrCat("parameter \"", param_.name,
                                 "\" has string=\"false\", so its value must "
                                 "be JSON, but it is not (",
                                 why, "); use string=\"true\" for plain text"),
                    out);
      }
    }
    param_.raw.assign(raw.data(), raw.size());
    call_.params.push_back(std::move(param_));
    param_offsets_.push_back(param_at_);
    param_ = Parameter{};
    pos_ = close + kParamClose.size();
    state_ = State::kInInvoke;
    return Step::kContinue;
  }

  Step After(absl::string_view in, bool final, ParseResult& out) {
    SkipWs(in);
    if (pos_ == in.size()) {
      if (!final) return Step::kWait;
      state_ = State::kStopped;
      return Step::kStop;
    }
    return Expected(
        in, pos_, final, {MatchKind::kMiss},
        [&] {
          return absl::StrCat("expected only whitespace after ", Quote(Close()),
                              " at ", At(in, close_at_),
                              ", which ends the reply");
        },
        out);
  }

  State state_ = State::kContent;
  size_t pos_ = 0;   // first byte not consumed (or content not emitted)
  size_t scan_ = 0;  // where the current search resumes
  size_t block_at_ = 0, invoke_at_ = 0, param_at_ = 0, close_at_ = 0;
  size_t calls_ = 0;  // completed invokes
  bool v32_ = false;
  bool closed_ = false;
  ToolCall call_;
  Parameter param_;
  std::vector<size_t> param_offsets_;
};

Parameter MakeStringParameter(std::string name, std::string text) {
  Parameter p;
  p.name = std::move(name);
  p.is_string = true;
  p.value = text;
  p.raw = std::move(text);
  return p;
}

Parameter MakeJsonParameter(std::string name, const nlohmann::json& value) {
  Parameter p;
  p.name = std::move(name);
  p.is_string = false;
  // '<' and '/' only occur inside JSON strings, where "<\/" means "</".
  p.raw = absl::StrReplaceAll(
      value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
      {{"</", "<\\/"}});
  p.value = nlohmann::json::parse(p.raw);
  return p;
}

const Parameter* ToolCall::Find(absl::string_view param_name) const {
  for (const Parameter& p : params) {
    if (p.name == param_name) return &p;
  }
  return nullptr;
}

std::string ParseError::ToString() const {
  return absl::StrCat("DSML error at line ", line, ", col ", column, " (byte ",
                      offset, "): ", message);
}

StreamParser::StreamParser() : machine_(std::make_unique<Machine>()) {}
StreamParser::~StreamParser() = default;

ParseResult StreamParser::Feed(absl::string_view chunk) {
  ParseResult out;
  if (machine_->stopped()) return out;
  buffer_.append(chunk.data(), chunk.size());
  machine_->Run(buffer_, /*final=*/false, out);
  return out;
}

ParseResult StreamParser::Finish() {
  ParseResult out;
  if (machine_->stopped()) return out;
  machine_->Run(buffer_, /*final=*/true, out);
  return out;
}

bool StreamParser::block_closed() const { return machine_->block_closed(); }

ParseResult Parse(absl::string_view text) {
  StreamParser::Machine machine;
  ParseResult out;
  machine.Run(text, /*final=*/true, out);
  return out;
}

std::string RenderToolsPrompt(const std::vector<ToolSpec>& tools) {
  std::string out = absl::StrCat(
      "## Tools\n\n"
      "You can call tools. To do so, end your reply with one block in this "
      "format (the bars are the full-width '｜'):\n\n",
      kOpenV4, "\n", kInvokeOpen, "TOOL_NAME\">\n", kParamOpen,
      "STRING_PARAMETER", kParamString, "plain text, as is", kParamClose, "\n",
      kParamOpen, "JSON_PARAMETER", kParamJson,
      "{\"any\": [\"JSON\", 1, true]}", kParamClose, "\n", kInvokeClose, "\n",
      kInvokeOpen, "OTHER_TOOL\">\n...\n", kInvokeClose, "\n", kCloseV4,
      "\n\n"
      "Rules:\n"
      "- Give string parameters string=\"true\" and write the text as it "
      "is: no quotes, no escaping; any characters and newlines are fine "
      "except the closing tag ",
      kParamClose,
      ".\n"
      "- Give every other parameter (number, boolean, null, array, object) "
      "string=\"false\" and write its value as JSON. A string containing ",
      kParamClose,
      " must also be sent this way, as a JSON string with the slash "
      "escaped: \"<\\/",
      kParamClose.substr(2),
      "\".\n"
      "- Several invokes in one block are parallel calls; their results "
      "come back in the same order, one <tool_result> block per call.\n"
      "- Nothing but whitespace may follow the block.\n\n"
      "### Available tools\n\n"
      "One JSON object per tool: its name, what it does, and its "
      "parameters as a JSON Schema.\n\n");
  for (const ToolSpec& tool : tools) {
    nlohmann::ordered_json line;
    line["name"] = tool.name;
    line["description"] = tool.description;
    line["parameters"] = tool.parameters;
    absl::StrAppend(
        &out,
        line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
        "\n");
  }
  return out;
}

namespace {

absl::Status CheckName(absl::string_view what, absl::string_view name) {
  bool bad_char = std::any_of(name.begin(), name.end(), [](char ch) {
    unsigned char c = static_cast<unsigned char>(ch);
    return c == '"' || c == '<' || c == '>' || c < 0x20 || c == 0x7F;
  });
  if (name.empty() || bad_char ||
      FindInvalidUtf8(name) != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " \"", Escape(name, true),
        "\" is not a DSML name (non-empty UTF-8 without '\"', '<', '>' or "
        "control characters)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> RenderCalls(const std::vector<ToolCall>& calls) {
  if (calls.empty()) return std::string();
  std::string out = absl::StrCat(kOpenV4, "\n");
  for (const ToolCall& call : calls) {
    absl::Status name_ok = CheckName("tool name", call.name);
    if (!name_ok.ok()) return name_ok;
    absl::StrAppend(&out, kInvokeOpen, call.name, kInvokeOpenEnd, "\n");
    for (const Parameter& p : call.params) {
      absl::Status param_ok = CheckName("parameter name", p.name);
      if (!param_ok.ok()) return param_ok;
      if (absl::StrContains(p.raw, kParamClose)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "parameter \"", p.name, "\" of tool \"", call.name, "\" contains ",
            kParamClose,
            ", which cannot be written in DSML; use MakeJsonParameter"));
      }
      absl::StrAppend(&out, kParamOpen, p.name,
                      p.is_string ? kParamString : kParamJson, p.raw,
                      kParamClose, "\n");
    }
    absl::StrAppend(&out, kInvokeClose, "\n");
  }
  absl::StrAppend(&out, kCloseV4);
  // The rest of the contract (UTF-8, JSON, unique names, value == raw) is
  // checked by parsing what was written.
  ParseResult back = Parse(out);
  if (!back.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("calls cannot be rendered: ", back.error->message));
  }
  if (back.calls != calls) {
    return absl::InvalidArgumentError(
        "calls cannot be rendered: a parameter's value does not match its "
        "raw text (build parameters with MakeStringParameter / "
        "MakeJsonParameter)");
  }
  return out;
}

std::string RenderResults(const std::vector<std::string>& outputs) {
  std::string out;
  for (size_t i = 0; i < outputs.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "" : "\n", "<tool_result>", outputs[i],
                    "</tool_result>");
  }
  return out;
}

}  // namespace dsec::client::dsml
