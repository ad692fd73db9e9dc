// DSML: the DeepSeek-V4 tool-call markup, parsed from model output and
// rendered back into prompts.
//
// A reply is free text (the assistant's content) optionally followed by one
// tool-call block; "｜" below is the full-width bar U+FF5C (EF BD 9C):
//
//   <｜DSML｜tool_calls>
//   <｜DSML｜invoke name="get_weather">
//   <｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>
//   <｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
//   </｜DSML｜invoke>
//   </｜DSML｜tool_calls>
//
// Grammar (ws = space, tab, CR, LF; tags are matched byte for byte, so
// attributes take exactly one space before them and double quotes):
//   reply   := content [block ws*]
//   content := any bytes not containing "<｜DSML｜"
//   block   := open ws* invoke (ws* invoke)* ws* close
//   open    := "<｜DSML｜tool_calls>" | "<｜DSML｜function_calls>" (V3.2)
//   close   := the matching "</｜DSML｜tool_calls>" /
//   "</｜DSML｜function_calls>" invoke  := "<｜DSML｜invoke name=\"" NAME "\">"
//   (ws* param)* ws*
//              "</｜DSML｜invoke>"
//   param   := "<｜DSML｜parameter name=\"" NAME "\" string=\"" BOOL "\">"
//              VALUE "</｜DSML｜parameter>"
//   NAME    := 1+ bytes of valid UTF-8 without '"', '<', '>' or controls
//   VALUE   := every byte up to the first "</｜DSML｜parameter>"
//
// Decisions a caller should know:
//   - Several invokes in one block are parallel calls, in order.
//   - string="true": VALUE is the text verbatim (newlines, '<', quotes,
//     fake tags such as "<｜DSML｜parameter" are all fine) and must be valid
//     UTF-8. string="false": VALUE is JSON (surrounding whitespace allowed).
//   - A string value can NOT contain the closing tag
//     "</｜DSML｜parameter>": the first occurrence ends the value. Such a
//     value has to be sent as string="false" with a JSON string that
//     escapes the slash, e.g. "<\/｜DSML｜parameter>"; MakeJsonParameter
//     does exactly that.
//   - Any "<｜DSML｜" in the content must open the block; text after the
//     block other than whitespace is an error; so is a block with no
//     invoke, a duplicate parameter name, or an unterminated element.
//     Nothing is guessed: the error says what was expected where.
//
// Thread-safety: free functions are thread-safe; a StreamParser is not
// (one per stream).
#ifndef DSEC_CLIENT_DSML_H_
#define DSEC_CLIENT_DSML_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace dsec::client::dsml {

// One argument of a call. `raw` is the text between the tags, verbatim;
// `value` is a JSON string holding `raw` when is_string, else raw parsed as
// JSON.
struct Parameter {
  std::string name;
  bool is_string = true;
  std::string raw;
  nlohmann::json value;

  bool operator==(const Parameter&) const = default;
};

// A string="true" parameter.
Parameter MakeStringParameter(std::string name, std::string text);
// A string="false" parameter holding `value` as compact JSON (with "</"
// escaped as "<\/" so the closing tag can never appear in it).
Parameter MakeJsonParameter(std::string name, const nlohmann::json& value);

struct ToolCall {
  std::string name;
  std::vector<Parameter> params;  // in the order written

  // The parameter called `name`, or nullptr.
  const Parameter* Find(absl::string_view param_name) const;
  bool operator==(const ToolCall&) const = default;
};

// Where and why the text is not valid DSML. `line` and `column` are
// 1-based; the column counts UTF-8 characters. `message` is written for the
// model, e.g. "expected '</｜DSML｜parameter>' to close parameter \"city\"
// opened at line 3, col 1, but the text ended".
struct ParseError {
  size_t offset = 0;
  int line = 1;
  int column = 1;
  std::string message;

  // "DSML error at line 3, col 1 (byte 57): <message>"
  std::string ToString() const;
  bool operator==(const ParseError&) const = default;
};

// The parsed reply. On error `calls` holds the invokes completed before the
// error (what a streaming consumer has already seen); a caller that wants
// all-or-nothing checks ok() first.
struct ParseResult {
  std::string content;
  std::vector<ToolCall> calls;
  std::optional<ParseError> error;

  bool ok() const { return !error.has_value(); }
};

// Parses a whole reply. Never fails other than through `error`.
ParseResult Parse(absl::string_view text);

// Parses a reply as it streams in. Chunks may split UTF-8 sequences and
// tags at any byte. The concatenation of everything Feed and Finish return
// equals Parse of the concatenated input, for every way of chunking it.
class StreamParser {
 public:
  StreamParser();
  StreamParser(const StreamParser&) = delete;
  StreamParser& operator=(const StreamParser&) = delete;

  // Returns what this chunk made known: content as soon as it cannot be the
  // start of a tag (never ending inside a UTF-8 sequence), each call as
  // soon as its "</｜DSML｜invoke>" arrives, and the error once the input
  // cannot be valid. After an error, later calls return nothing.
  ParseResult Feed(absl::string_view chunk);
  // Ends the input: flushes held-back content and reports truncation
  // (e.g. "... but the text ended"). REQUIRES: called once, last.
  ParseResult Finish();

  // True once the closing tag of the block has been seen: a sampler can
  // stop generating.
  bool block_closed() const;

  ~StreamParser();

 private:
  friend ParseResult Parse(absl::string_view text);
  class Machine;        // the grammar as a resumable state machine (dsml.cc)
  std::string buffer_;  // all input so far (positions in errors index it)
  std::unique_ptr<Machine> machine_;
};

// A tool as the model is told about it: `parameters` is a JSON schema
// (normally {"type": "object", "properties": ..., "required": [...]}).
struct ToolSpec {
  std::string name;
  std::string description;
  nlohmann::json parameters;
};

// The "## Tools" section of a system prompt: how to write DSML calls, then
// one JSON line per tool. Deterministic (schema keys sorted).
std::string RenderToolsPrompt(const std::vector<ToolSpec>& tools);

// DSML text for `calls` (a "<｜DSML｜tool_calls>" block; empty string for
// no calls). Parse(*RenderCalls(c)).calls == c. INVALID_ARGUMENT when a
// name is not a valid NAME, a string value contains the closing tag or is
// not UTF-8, or a JSON value's `raw` does not parse.
absl::StatusOr<std::string> RenderCalls(const std::vector<ToolCall>& calls);

// Tool outputs for the next prompt: one "<tool_result>...</tool_result>"
// block per call, in call order, each holding the output verbatim (error
// texts included), separated by newlines.
std::string RenderResults(const std::vector<std::string>& outputs);

}  // namespace dsec::client::dsml

#endif  // DSEC_CLIENT_DSML_H_
