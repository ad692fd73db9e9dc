#include "client/dsml.h"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::client::dsml {
namespace {

using ::dsec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// Tests write "|" for the full-width bar; D() swaps in U+FF5C so the
// texts stay readable.
std::string D(absl::string_view text) {
  return absl::StrReplaceAll(text, {{"|", "｜"}});
}

// The weather example of the format, with content before the block.
std::string WeatherText() {
  return D(
      "Let me check.\n\n"
      "<|DSML|tool_calls>\n"
      "<|DSML|invoke name=\"get_weather\">\n"
      "<|DSML|parameter name=\"city\" string=\"true\">Paris</|DSML|parameter>\n"
      "<|DSML|parameter name=\"days\" string=\"false\">3</|DSML|parameter>\n"
      "</|DSML|invoke>\n"
      "<|DSML|invoke name=\"get_time\">\n"
      "<|DSML|parameter name=\"zone\" string=\"true\">Europe/Paris"
      "</|DSML|parameter>\n"
      "</|DSML|invoke>\n"
      "</|DSML|tool_calls>");
}

// A multi-call text using every feature: content, unicode, JSON, fake tags.
std::string RichText() {
  return D(
      "Plan: 読む → edit.\n"
      "<|DSML|tool_calls>\n"
      "<|DSML|invoke name=\"read_file\">\n"
      "<|DSML|parameter name=\"path\" string=\"true\">/src/ünï.py"
      "</|DSML|parameter>\n"
      "<|DSML|parameter name=\"limit\" string=\"false\"> 20 "
      "</|DSML|parameter>\n"
      "</|DSML|invoke>\n"
      "<|DSML|invoke name=\"write_file\">\n"
      "<|DSML|parameter name=\"content\" string=\"true\">if a < b > c:\n"
      "    print(\"<|DSML|parameter name=\\\"x\\\">\")  # 🎉\n"
      "</|DSML|parameter>\n"
      "<|DSML|parameter name=\"opts\" string=\"false\">{\"mode\": [1, 2.5, "
      "true, null, \"é\"]}</|DSML|parameter>\n"
      "</|DSML|invoke>\n"
      "<|DSML|invoke name=\"天气\">\n"
      "</|DSML|invoke>\n"
      "</|DSML|tool_calls>\n");
}

// Feeds `text` cut at `cuts` (sorted offsets) and concatenates the deltas.
ParseResult StreamWithCuts(absl::string_view text, std::vector<size_t> cuts) {
  StreamParser parser;
  ParseResult all;
  auto add = [&all](ParseResult delta) {
    all.content += delta.content;
    for (ToolCall& c : delta.calls) all.calls.push_back(std::move(c));
    if (delta.error) {
      EXPECT_FALSE(all.error) << "two errors";
      all.error = delta.error;
    }
  };
  size_t start = 0;
  cuts.push_back(text.size());
  for (size_t cut : cuts) {
    add(parser.Feed(text.substr(start, cut - start)));
    start = cut;
  }
  add(parser.Finish());
  return all;
}

ParseResult StreamRandomly(absl::string_view text, std::mt19937& rng,
                           size_t max_chunk) {
  std::vector<size_t> cuts;
  std::uniform_int_distribution<size_t> step(0, max_chunk);
  for (size_t at = step(rng); at < text.size(); at += step(rng)) {
    cuts.push_back(at);
  }
  return StreamWithCuts(text, cuts);
}

void ExpectSame(const ParseResult& got, const ParseResult& want,
                absl::string_view context) {
  EXPECT_EQ(got.content, want.content) << context;
  EXPECT_EQ(got.calls, want.calls) << context;
  EXPECT_EQ(got.error, want.error)
      << context << "\n got: " << (got.error ? got.error->ToString() : "ok")
      << "\nwant: " << (want.error ? want.error->ToString() : "ok");
}

// ---- golden cases -----------------------------------------------------------

TEST(DsmlParse, SingleCallWithStringAndJsonParameters) {
  ParseResult r = Parse(D(
      "<|DSML|tool_calls>\n"
      "<|DSML|invoke name=\"get_weather\">\n"
      "<|DSML|parameter name=\"city\" string=\"true\">Paris</|DSML|parameter>\n"
      "<|DSML|parameter name=\"days\" string=\"false\">3</|DSML|parameter>\n"
      "</|DSML|invoke>\n"
      "</|DSML|tool_calls>"));
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.calls.size(), 1u);
  const ToolCall& call = r.calls[0];
  EXPECT_EQ(call.name, "get_weather");
  ASSERT_EQ(call.params.size(), 2u);
  EXPECT_EQ(call.params[0], MakeStringParameter("city", "Paris"));
  EXPECT_EQ(call.params[1], MakeJsonParameter("days", 3));
  EXPECT_EQ(call.Find("days")->value, 3);
  EXPECT_EQ(call.Find("weeks"), nullptr);
}

TEST(DsmlParse, SeveralInvokesAreParallelCallsInOrder) {
  ParseResult r = Parse(WeatherText());
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  EXPECT_EQ(r.content, "Let me check.\n\n");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "get_weather");
  EXPECT_EQ(r.calls[1].name, "get_time");
  EXPECT_THAT(r.calls[1].params,
              ElementsAre(MakeStringParameter("zone", "Europe/Paris")));
}

TEST(DsmlParse, JsonParametersOfEveryType) {
  ParseResult r = Parse(D(
      "<|DSML|tool_calls><|DSML|invoke name=\"f\">"
      "<|DSML|parameter name=\"int\" string=\"false\">-42</|DSML|parameter>"
      "<|DSML|parameter name=\"float\" string=\"false\">2.5e3</|DSML|parameter>"
      "<|DSML|parameter name=\"yes\" string=\"false\">true</|DSML|parameter>"
      "<|DSML|parameter name=\"no\" string=\"false\">false</|DSML|parameter>"
      "<|DSML|parameter name=\"nil\" string=\"false\">null</|DSML|parameter>"
      "<|DSML|parameter name=\"str\" "
      "string=\"false\">\"a\\nb\"</|DSML|parameter>"
      "<|DSML|parameter name=\"arr\" string=\"false\">[1, \"x\", [true]]"
      "</|DSML|parameter>"
      "<|DSML|parameter name=\"obj\" string=\"false\">\n  {\"k\": {\"n\": "
      "null}}\n</|DSML|parameter>"
      "</|DSML|invoke></|DSML|tool_calls>"));
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  ASSERT_EQ(r.calls.size(), 1u);
  const ToolCall& c = r.calls[0];
  ASSERT_EQ(c.params.size(), 8u);
  for (const Parameter& p : c.params) EXPECT_FALSE(p.is_string) << p.name;
  EXPECT_EQ(c.Find("int")->value, -42);
  EXPECT_EQ(c.Find("float")->value, 2500.0);
  EXPECT_EQ(c.Find("yes")->value, true);
  EXPECT_EQ(c.Find("no")->value, false);
  EXPECT_TRUE(c.Find("nil")->value.is_null());
  EXPECT_EQ(c.Find("str")->value, "a\nb");
  EXPECT_EQ(c.Find("arr")->value, nlohmann::json::parse(R"([1,"x",[true]])"));
  EXPECT_EQ(c.Find("obj")->value, nlohmann::json::parse(R"({"k":{"n":null}})"));
  // raw keeps the text as written, whitespace included.
  EXPECT_EQ(c.Find("obj")->raw, "\n  {\"k\": {\"n\": null}}\n");
}

TEST(DsmlParse, UnicodeInNamesAndValues) {
  ParseResult r = Parse(
      D("<|DSML|tool_calls>\n<|DSML|invoke name=\"天气_查询\">\n"
        "<|DSML|parameter name=\"città\" string=\"true\">Zürich 🌍 ｜</|DSML|"
        "parameter>\n"
        "<|DSML|parameter name=\"ключ\" string=\"false\">\"значение\"</|DSML|"
        "parameter>\n"
        "</|DSML|invoke>\n</|DSML|tool_calls>"));
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].name, "天气_查询");
  EXPECT_EQ(r.calls[0].params[0], MakeStringParameter("città", "Zürich 🌍 ｜"));
  EXPECT_EQ(r.calls[0].params[1].value, "значение");
}

TEST(DsmlParse, StringValuesAreVerbatimIncludingBracketsQuotesAndFakeTags) {
  std::string value =
      D("<div class=\"x\">a > b && c < d</div>\n"
        "  '<|DSML|parameter name=\"evil\" string=\"true\">'\n"
        "<|DSML|invoke name=\"nested\">\n"
        "</|DSML|invoke>\n"
        "</|DSML|tool_calls>\n"
        "<|DSML|tool_calls>\n"
        "\ttabs\r\nand \"quotes\" and \\backslashes\\\n");
  ParseResult r = Parse(D(absl::StrCat(
      "<|DSML|tool_calls>\n<|DSML|invoke name=\"write_file\">\n"
      "<|DSML|parameter name=\"content\" string=\"true\">",
      value, "</|DSML|parameter>\n</|DSML|invoke>\n</|DSML|tool_calls>")));
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].params[0].raw, value);
  EXPECT_EQ(r.calls[0].params[0].value, value);
}

TEST(DsmlParse, EmptyStringValueIsAllowed) {
  ParseResult r = Parse(D(
      "<|DSML|tool_calls><|DSML|invoke name=\"f\"><|DSML|parameter name=\"s\" "
      "string=\"true\"></|DSML|parameter></|DSML|invoke></|DSML|tool_calls>"));
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  EXPECT_EQ(r.calls[0].params[0], MakeStringParameter("s", ""));
}

// The documented limit: a string="true" value ends at the first closing
// tag, so a value that contains it cannot be written that way; the
// closing tag's remainder then breaks the grammar, which is reported.
TEST(DsmlParse, ClosingTagInsideAStringValueEndsTheValue) {
  ParseResult r = Parse(
      D("<|DSML|tool_calls>\n<|DSML|invoke name=\"f\">\n"
        "<|DSML|parameter name=\"x\" string=\"true\">a</|DSML|parameter> b"
        "</|DSML|parameter>\n</|DSML|invoke>\n</|DSML|tool_calls>"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error->message,
            D("expected '<|DSML|parameter name=\"' or '</|DSML|invoke>' in "
              "invoke \"f\" opened at line 2, col 1, but found "
              "'b</|DSML|parameter>'"));
}

TEST(DsmlParse, ClosingTagInsideAValueTravelsAsAnEscapedJsonString) {
  ParseResult r = Parse(
      D("<|DSML|tool_calls>\n<|DSML|invoke name=\"f\">\n"
        "<|DSML|parameter name=\"x\" string=\"false\">\"a <\\/|DSML|parameter> "
        "b\"</|DSML|parameter>\n</|DSML|invoke>\n</|DSML|tool_calls>"));
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  EXPECT_EQ(r.calls[0].params[0].value, D("a </|DSML|parameter> b"));
}

TEST(DsmlParse, AcceptsTheV32FunctionCallsWrapper) {
  std::string v32 =
      absl::StrReplaceAll(WeatherText(), {{"tool_calls", "function_calls"}});
  ParseResult r = Parse(v32);
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  EXPECT_EQ(r.calls, Parse(WeatherText()).calls);
}

TEST(DsmlParse, ContentWithoutBlockIsAllContent) {
  std::string text = "Just text, with <b>tags</b> and ｜bars｜ and <|DSML.";
  ParseResult r = Parse(text);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.content, text);
  EXPECT_TRUE(r.calls.empty());
}

TEST(DsmlParse, EmptyTextIsEmptyContent) {
  ParseResult r = Parse("");
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.content, "");
}

TEST(DsmlParse, WhitespaceBetweenElementsAndAfterTheBlockIsAllowed) {
  ParseResult r = Parse(
      D("x<|DSML|tool_calls> \r\n\t<|DSML|invoke name=\"f\">\n\n  "
        "<|DSML|parameter name=\"a\" string=\"true\">1</|DSML|parameter>\t\r\n"
        "</|DSML|invoke>\n\n</|DSML|tool_calls>\n\n  \n"));
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  EXPECT_EQ(r.content, "x");
  EXPECT_THAT(r.calls[0].params, ElementsAre(MakeStringParameter("a", "1")));
}

TEST(DsmlParse, InvokeWithoutParameters) {
  ParseResult r =
      Parse(D("<|DSML|tool_calls><|DSML|invoke name=\"now\"></|DSML|invoke>"
              "</|DSML|tool_calls>"));
  ASSERT_TRUE(r.ok()) << r.error->ToString();
  EXPECT_EQ(r.calls, (std::vector<ToolCall>{ToolCall{"now", {}}}));
}

// ---- malformed input: exact errors ------------------------------------------

struct BadCase {
  std::string name;
  std::string text;  // "|" is the full-width bar
  size_t offset;
  int line;
  int column;
  std::string message;  // "|" is the full-width bar
};

std::vector<BadCase> BadCases() {
  const std::string head = "<|DSML|tool_calls>\n<|DSML|invoke name=\"f\">\n";
  const std::string tail = "</|DSML|invoke>\n</|DSML|tool_calls>";
  return {
      {"DsmlTagInContentThatIsNotABlock", "Hi <|DSML|invoke name=\"x\">", 3, 1,
       4,
       "expected '<|DSML|tool_calls>' (or '<|DSML|function_calls>') to open "
       "the tool-call block, the only thing '<|DSML|' may start, but found "
       "'<|DSML|invoke name=\"x\">'"},
      {"SingleQuotedAttribute",
       "<|DSML|tool_calls>\n<|DSML|invoke name='x'>\n" + tail, 23, 2, 1,
       "expected '<|DSML|invoke name=\"' or '</|DSML|tool_calls>' in the "
       "tool_calls block opened at line 1, col 1, but found '<|DSML|invoke "
       "name='x'>'"},
      {"TwoSpacesBeforeAttribute",
       "<|DSML|tool_calls>\n<|DSML|invoke  name=\"f\">\n" + tail, 23, 2, 1,
       "expected '<|DSML|invoke name=\"' or '</|DSML|tool_calls>' in the "
       "tool_calls block opened at line 1, col 1, but found '<|DSML|invoke  "
       "name=\"f\">'"},
      {"UnterminatedToolName",
       "<|DSML|tool_calls>\n<|DSML|invoke name=\"get_weather>\n" + tail, 58, 2,
       32,
       "expected '\"' to end the tool name of the invoke opened at line 2, "
       "col 1, but found '>'"},
      {"EmptyToolName", "<|DSML|tool_calls>\n<|DSML|invoke name=\"\">\n" + tail,
       47, 2, 21,
       "the tool name of the invoke opened at line 2, col 1 is empty"},
      {"SelfClosingInvoke",
       "<|DSML|tool_calls>\n<|DSML|invoke name=\"f\"/>\n</|DSML|tool_calls>",
       48, 2, 22, "expected '\">' after the tool name \"f\", but found '\"/>'"},
      {"DuplicateParameter",
       head +
           "<|DSML|parameter name=\"a\" string=\"true\">1</|DSML|parameter>\n"
           "<|DSML|parameter name=\"a\" string=\"true\">2</|DSML|parameter>\n" +
           tail,
       119, 4, 1,
       "parameter \"a\" appears twice in invoke \"f\" (first at line 3, col "
       "1)"},
      {"MissingStringAttribute",
       head + "<|DSML|parameter name=\"city\">Paris</|DSML|parameter>\n" + tail,
       82, 3, 28,
       "expected '\" string=\"true\">' or '\" string=\"false\">' after "
       "parameter name \"city\", but found '\">Paris</|DSML|parameter>'"},
      {"StringAttributeNotABoolean",
       head +
           "<|DSML|parameter name=\"city\" string=\"yes\">Paris</|DSML|"
           "parameter>\n" +
           tail,
       82, 3, 28,
       "expected '\" string=\"true\">' or '\" string=\"false\">' after "
       "parameter name \"city\", but found '\" string=\"yes\">Paris</|DSML|"
       "...'"},
      {"EmptyParameterName",
       head +
           "<|DSML|parameter name=\"\" string=\"true\">x</|DSML|parameter>\n" +
           tail,
       78, 3, 24, "the name of the parameter opened at line 3, col 1 is empty"},
      {"InvalidJsonValue",
       head +
           "<|DSML|parameter name=\"days\" string=\"false\">three</|DSML|"
           "parameter>\n" +
           tail,
       100, 3, 46,
       "parameter \"days\" has string=\"false\", so its value must be JSON, "
       "but it is not (syntax error while parsing value - invalid literal; "
       "last read: 'th'); use string=\"true\" for plain text"},
      {"EmptyJsonValue",
       head +
           "<|DSML|parameter name=\"x\" string=\"false\"></|DSML|parameter>\n" +
           tail,
       96, 3, 42,
       "parameter \"x\" has string=\"false\", so its value must be JSON, but "
       "it is not (syntax error while parsing value - unexpected end of "
       "input; expected '[', '{', or a literal); use string=\"true\" for "
       "plain text"},
      {"TrailingCommaInJsonObject",
       head +
           "<|DSML|parameter name=\"x\" string=\"false\">{\"a\": 1,}</|DSML|"
           "parameter>\n" +
           tail,
       104, 3, 50,
       "parameter \"x\" has string=\"false\", so its value must be JSON, but "
       "it is not (syntax error while parsing object key - unexpected '}'; "
       "expected string literal); use string=\"true\" for plain text"},
      {"JsonNestedTooDeep",
       head + "<|DSML|parameter name=\"p\" string=\"false\">" +
           std::string(600, '[') + std::string(600, ']') +
           "</|DSML|parameter>\n" + tail,
       608, 3, 554,
       "the JSON value of parameter \"p\" is nested deeper than 512 levels"},
      {"InvalidUtf8InStringValue",
       head +
           "<|DSML|parameter name=\"p\" string=\"true\">a\xff "
           "b</|DSML|parameter>\n" +
           tail,
       96, 3, 42,
       "the value of parameter \"p\" is not valid UTF-8 text (byte 0xFF)"},
      {"InvalidUtf8InToolName",
       "<|DSML|tool_calls>\n<|DSML|invoke name=\"f\xc3(\">\n" + tail, 48, 2, 22,
       "the tool name of the invoke opened at line 2, col 1 is not valid "
       "UTF-8"},
      {"UnterminatedParameterValue",
       "<|DSML|tool_calls>\n<|DSML|invoke name=\"get_weather\">\n"
       "<|DSML|parameter name=\"city\" string=\"true\">Paris",
       113, 3, 49,
       "expected '</|DSML|parameter>' to close parameter \"city\" opened at "
       "line 3, col 1, but the text ended"},
      {"UnclosedInvoke",
       head +
           "<|DSML|parameter name=\"c\" string=\"true\">P</|DSML|parameter>\n",
       119, 4, 1,
       "expected '<|DSML|parameter name=\"' or '</|DSML|invoke>' in invoke "
       "\"f\" opened at line 2, col 1, but the text ended"},
      {"TextEndsInsideATag", head + "<|DSML|param", 51, 3, 1,
       "expected '<|DSML|parameter name=\"' or '</|DSML|invoke>' in invoke "
       "\"f\" opened at line 2, col 1, but the text ended"},
      {"TextEndsInsideTheOpeningTag", "Hello <|DSML|tool_c", 6, 1, 7,
       "expected '<|DSML|tool_calls>' (or '<|DSML|function_calls>') to open "
       "the tool-call block, the only thing '<|DSML|' may start, but the "
       "text ended"},
      {"UnclosedBlock", head + "</|DSML|invoke>\n", 71, 4, 1,
       "expected '<|DSML|invoke name=\"' or '</|DSML|tool_calls>' in the "
       "tool_calls block opened at line 1, col 1, but the text ended"},
      {"EmptyBlock", "<|DSML|tool_calls>\n</|DSML|tool_calls>", 23, 2, 1,
       "the tool_calls block opened at line 1, col 1 has no call: expected "
       "'<|DSML|invoke name=\"' before '</|DSML|tool_calls>'"},
      {"TextAfterTheBlock", head + tail + "\nDone!", 95, 5, 1,
       "expected only whitespace after '</|DSML|tool_calls>' at line 4, col "
       "1, which ends the reply, but found 'Done!'"},
      {"SecondBlock", head + tail + "\n" + head + tail, 95, 5, 1,
       "expected only whitespace after '</|DSML|tool_calls>' at line 4, col "
       "1, which ends the reply, but found '<|DSML|tool_calls>'"},
      {"MismatchedWrapperClose",
       head + "</|DSML|invoke>\n</|DSML|function_calls>", 71, 4, 1,
       "expected '<|DSML|invoke name=\"' or '</|DSML|tool_calls>' in the "
       "tool_calls block opened at line 1, col 1, but found "
       "'</|DSML|function_calls>'"},
      {"TextBetweenInvokes",
       "<|DSML|tool_calls>\nsome words\n<|DSML|invoke name=\"f\">\n" + tail, 23,
       2, 1,
       "expected '<|DSML|invoke name=\"' or '</|DSML|tool_calls>' in the "
       "tool_calls block opened at line 1, col 1, but found 'some words'"},
      {"TextInsideInvoke", head + "city=Paris\n" + tail, 51, 3, 1,
       "expected '<|DSML|parameter name=\"' or '</|DSML|invoke>' in invoke "
       "\"f\" opened at line 2, col 1, but found 'city=Paris'"},
      {"NewlineInToolName",
       "<|DSML|tool_calls>\n<|DSML|invoke name=\"f\n\">\n" + tail, 48, 2, 22,
       "expected '\"' to end the tool name of the invoke opened at line 2, "
       "col 1, but found a line break"},
  };
}

class DsmlMalformed : public ::testing::TestWithParam<BadCase> {};

TEST_P(DsmlMalformed, ReportsWhereAndWhatWasExpected) {
  const BadCase& c = GetParam();
  std::string text = D(c.text);
  ParseResult r = Parse(text);
  ASSERT_FALSE(r.ok()) << "parsed: " << text;
  EXPECT_EQ(r.error->message, D(c.message));
  EXPECT_EQ(r.error->offset, c.offset);
  EXPECT_EQ(r.error->line, c.line);
  EXPECT_EQ(r.error->column, c.column);
  // Byte by byte streaming reports the same error.
  std::vector<size_t> every_byte;
  for (size_t i = 1; i < text.size(); ++i) every_byte.push_back(i);
  ExpectSame(StreamWithCuts(text, every_byte), r, c.name);
}

INSTANTIATE_TEST_SUITE_P(All, DsmlMalformed, ::testing::ValuesIn(BadCases()),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           return info.param.name;
                         });

TEST(DsmlParse, CallsBeforeAnErrorAreReported) {
  ParseResult r =
      Parse(D("<|DSML|tool_calls>\n<|DSML|invoke name=\"a\">\n</|DSML|invoke>\n"
              "<|DSML|invoke name=\"b\">\n"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.calls, (std::vector<ToolCall>{ToolCall{"a", {}}}));
}

TEST(DsmlParseError, ToStringNamesLineColumnAndByte) {
  ParseError e{57, 3, 1, "boom"};
  EXPECT_EQ(e.ToString(), "DSML error at line 3, col 1 (byte 57): boom");
}

// ---- truncation -------------------------------------------------------------

// Every prefix of a valid text either parses to a prefix of the full result
// (content only, before the block; the whole result, after it) or fails
// with an error inside the prefix; streaming agrees on every one.
TEST(DsmlTruncation, EveryPrefixIsAValidPrefixOrAnError) {
  const std::string text = RichText();
  const ParseResult full = Parse(text);
  ASSERT_TRUE(full.ok()) << full.error->ToString();
  ASSERT_EQ(full.calls.size(), 3u);
  const size_t block = text.find(D("<|DSML|"));
  const size_t closed =
      text.rfind(D("</|DSML|tool_calls>")) + D("</|DSML|tool_calls>").size();
  std::mt19937 rng(7);
  for (size_t k = 0; k <= text.size(); ++k) {
    std::string prefix = text.substr(0, k);
    ParseResult r = Parse(prefix);
    if (k < block + D("<|DSML|").size()) {
      ASSERT_TRUE(r.ok()) << k;
      EXPECT_EQ(r.content, prefix);
    } else if (k >= closed) {
      ASSERT_TRUE(r.ok()) << k;
      EXPECT_EQ(r.content, full.content);
      EXPECT_EQ(r.calls, full.calls);
    } else {
      ASSERT_FALSE(r.ok()) << k;
      EXPECT_LE(r.error->offset, k);
      EXPECT_THAT(r.error->message, HasSubstr("the text ended")) << k;
      EXPECT_EQ(r.content, full.content);
      ASSERT_LE(r.calls.size(), full.calls.size());
      EXPECT_TRUE(
          std::equal(r.calls.begin(), r.calls.end(), full.calls.begin()))
          << k;
    }
    ExpectSame(StreamRandomly(prefix, rng, 7), r, absl::StrCat("k=", k));
  }
}

// ---- streaming --------------------------------------------------------------

TEST(DsmlStream, RandomChunkingMatchesParse) {
  std::vector<std::string> texts = {WeatherText(), RichText(), ""};
  for (const BadCase& c : BadCases()) texts.push_back(D(c.text));
  std::mt19937 rng(20240611);
  for (const std::string& text : texts) {
    ParseResult want = Parse(text);
    for (int i = 0; i < 200; ++i) {
      ExpectSame(StreamRandomly(text, rng, 1 + i % 40), want, text);
      if (HasFailure()) return;
    }
  }
}

TEST(DsmlStream, EmitsContentBeforeAPossibleTagAndHoldsThePossibleTag) {
  StreamParser parser;
  EXPECT_EQ(parser.Feed("Hello <").content, "Hello ");
  EXPECT_EQ(parser.Feed("b>").content, "<b>");
  EXPECT_EQ(parser.Feed(D("<|DS")).content, "");
  ParseResult rest = parser.Feed("x");
  EXPECT_EQ(rest.content, D("<|DSx"));
  EXPECT_TRUE(parser.Finish().ok());
}

TEST(DsmlStream, NeverEmitsHalfAUtf8Character) {
  StreamParser parser;
  EXPECT_EQ(parser.Feed("caf\xC3").content, "caf");
  EXPECT_EQ(parser.Feed("\xA9 \xF0\x9F").content, "\xC3\xA9 ");
  EXPECT_EQ(parser.Feed("\x8E").content, "");
  EXPECT_EQ(parser.Feed("\x89").content, "\xF0\x9F\x8E\x89");
}

TEST(DsmlStream, EmitsEachCallWhenItsInvokeCloses) {
  const std::string text = WeatherText();
  const std::string first_close = D("</|DSML|invoke>");
  size_t end_first = text.find(first_close) + first_close.size();
  StreamParser parser;
  ParseResult a = parser.Feed(text.substr(0, end_first - 1));
  EXPECT_EQ(a.content, "Let me check.\n\n");
  EXPECT_TRUE(a.calls.empty());
  ParseResult b = parser.Feed(text.substr(end_first - 1, 1));
  ASSERT_EQ(b.calls.size(), 1u);
  EXPECT_EQ(b.calls[0].name, "get_weather");
  EXPECT_FALSE(parser.block_closed());
  ParseResult c = parser.Feed(text.substr(end_first));
  ASSERT_EQ(c.calls.size(), 1u);
  EXPECT_EQ(c.calls[0].name, "get_time");
  EXPECT_TRUE(parser.block_closed());
  ParseResult d = parser.Finish();
  EXPECT_TRUE(d.ok());
  EXPECT_TRUE(d.calls.empty());
}

TEST(DsmlStream, ReportsAnErrorAsSoonAsItIsCertainAndThenNothing) {
  StreamParser parser;
  EXPECT_TRUE(parser.Feed(D("<|DSML|tool_calls>\n<|DSML|inv")).ok());
  // "<|DSML|invalid" cannot become a valid tag, but the snippet shown in
  // the error waits for the end of its line.
  EXPECT_TRUE(parser.Feed("alid").ok());
  ParseResult r = parser.Feed(" tag\nmore");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error->message, HasSubstr(D("found '<|DSML|invalid tag'")));
  EXPECT_TRUE(parser.Feed(D("</|DSML|tool_calls>")).ok());
  EXPECT_TRUE(parser.Finish().ok());
}

// ---- fuzzing ----------------------------------------------------------------

// Random mutations of valid texts: parsing never crashes, errors point into
// the text with valid UTF-8 messages, streaming agrees, and what parses
// renders back to the same calls.
TEST(DsmlFuzz, MutatedTextsParseConsistently) {
  const std::vector<std::string> seeds = {WeatherText(), RichText()};
  const std::vector<std::string> pieces = {D("<|DSML|"),
                                           D("</|DSML|parameter>"),
                                           D("</|DSML|invoke>"),
                                           D("<|DSML|invoke name=\""),
                                           D("<|DSML|parameter name=\""),
                                           "\" string=\"true\">",
                                           "\" string=\"false\">",
                                           "\"",
                                           ">",
                                           "<",
                                           "\n",
                                           "｜",
                                           "\xEF\xBD",
                                           "{",
                                           "[1,",
                                           "\xFF",
                                           "é",
                                           std::string(1, '\0')};
  std::mt19937 rng(12345);
  auto pick = [&rng](size_t n) {
    return std::uniform_int_distribution<size_t>(0, n - 1)(rng);
  };
  int parsed_ok = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string text = seeds[pick(seeds.size())];
    int mutations = 1 + static_cast<int>(pick(4));
    for (int m = 0; m < mutations; ++m) {
      size_t at = pick(text.size() + 1);
      switch (pick(5)) {
        case 0:  // insert a random byte
          text.insert(at, 1, static_cast<char>(pick(256)));
          break;
        case 1:  // delete a run
          text.erase(at, pick(8));
          break;
        case 2:  // overwrite a byte
          if (at < text.size()) text[at] = static_cast<char>(pick(256));
          break;
        case 3:  // insert a grammar piece
          text.insert(at, pieces[pick(pieces.size())]);
          break;
        case 4: {  // duplicate a slice
          size_t from = pick(text.size() + 1);
          text.insert(at, text.substr(from, pick(40)));
          break;
        }
      }
    }
    ParseResult r = Parse(text);
    if (r.ok()) {
      ++parsed_ok;
      absl::StatusOr<std::string> rendered = RenderCalls(r.calls);
      ASSERT_TRUE(rendered.ok()) << rendered.status() << "\n" << text;
      EXPECT_EQ(Parse(*rendered).calls, r.calls) << text;
    } else {
      ASSERT_LE(r.error->offset, text.size());
      EXPECT_EQ(nlohmann::json(r.error->message).dump().empty(), false);
      EXPECT_GE(r.error->line, 1);
      EXPECT_GE(r.error->column, 1);
    }
    ExpectSame(StreamRandomly(text, rng, 1 + iter % 16), r, text);
    if (HasFailure()) return;
  }
  // The mutations keep some texts valid, so both paths are exercised.
  EXPECT_GT(parsed_ok, 100);
}

TEST(DsmlFuzz, RandomBytesNeverCrash) {
  std::mt19937 rng(99);
  for (int iter = 0; iter < 5000; ++iter) {
    std::string text(std::uniform_int_distribution<int>(0, 64)(rng), '\0');
    for (char& c : text) c = static_cast<char>(rng());
    if (iter % 2) text = D("<|DSML|tool_calls>") + text;
    ParseResult r = Parse(text);
    ExpectSame(StreamRandomly(text, rng, 5), r, "random");
    if (HasFailure()) return;
  }
}

// ---- rendering
// ----------------------------------------------------------------

TEST(DsmlRender, CallsRoundTripThroughParse) {
  std::vector<ToolCall> calls = Parse(RichText()).calls;
  ASSERT_EQ(calls.size(), 3u);
  calls.push_back(ToolCall{
      "f",
      {MakeJsonParameter("closing", D("x </|DSML|parameter> y")),
       MakeJsonParameter(
           "all", nlohmann::json::parse(R"({"a":[1,2.5,null,true,"<\/b>"]})")),
       MakeStringParameter("multi", "line 1\nline 2\n")}});
  absl::StatusOr<std::string> text = RenderCalls(calls);
  ASSERT_TRUE(text.ok()) << text.status();
  ParseResult back = Parse(*text);
  ASSERT_TRUE(back.ok()) << back.error->ToString();
  EXPECT_EQ(back.content, "");
  EXPECT_EQ(back.calls, calls);
}

TEST(DsmlRender, CallsUseTheV4Format) {
  absl::StatusOr<std::string> text = RenderCalls({ToolCall{
      "get_weather",
      {MakeStringParameter("city", "Paris"), MakeJsonParameter("days", 3)}}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, D("<|DSML|tool_calls>\n"
                     "<|DSML|invoke name=\"get_weather\">\n"
                     "<|DSML|parameter name=\"city\" string=\"true\">Paris"
                     "</|DSML|parameter>\n"
                     "<|DSML|parameter name=\"days\" string=\"false\">3"
                     "</|DSML|parameter>\n"
                     "</|DSML|invoke>\n"
                     "</|DSML|tool_calls>"));
  EXPECT_EQ(*RenderCalls({}), "");
}

TEST(DsmlRender, RefusesCallsThatCannotBeWritten) {
  EXPECT_THAT(RenderCalls({ToolCall{"a\"b", {}}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("is not a DSML name")));
  EXPECT_THAT(RenderCalls({ToolCall{
                  "f", {MakeStringParameter("s", D("a</|DSML|parameter>"))}}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("use MakeJsonParameter")));
  EXPECT_THAT(
      RenderCalls({ToolCall{
          "f",
          {MakeStringParameter("s", "1"), MakeStringParameter("s", "2")}}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("appears twice")));
  Parameter lying = MakeJsonParameter("n", 1);
  lying.value = 2;
  EXPECT_THAT(RenderCalls({ToolCall{"f", {lying}}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("does not match its raw text")));
}

TEST(DsmlRender, ToolsPromptExplainsTheFormatAndListsSchemas) {
  std::vector<ToolSpec> tools = {
      {"get_weather", "Weather for a city.",
       nlohmann::json::parse(R"({"type":"object","required":["city"],
         "properties":{"days":{"type":"integer"},"city":{"type":"string"}}})")},
      {"now", "The time.", nlohmann::json::parse(R"({"type":"object"})")}};
  std::string prompt = RenderToolsPrompt(tools);
  EXPECT_THAT(prompt, StartsWith("## Tools\n"));
  EXPECT_THAT(prompt, HasSubstr(D("<|DSML|tool_calls>\n<|DSML|invoke name=")));
  EXPECT_THAT(prompt, HasSubstr("string=\"false\""));
  EXPECT_THAT(
      prompt,
      HasSubstr("{\"name\":\"get_weather\",\"description\":\"Weather for a "
                "city.\",\"parameters\":{\"properties\":{\"city\":{\"type\":"
                "\"string\"},\"days\":{\"type\":\"integer\"}},\"required\":["
                "\"city\"],\"type\":\"object\"}}\n"));
  EXPECT_THAT(prompt, HasSubstr("{\"name\":\"now\""));
  EXPECT_EQ(prompt, RenderToolsPrompt(tools));
  // The example in the prompt is itself valid DSML.
  size_t start = prompt.find(D("<|DSML|tool_calls>"));
  size_t end =
      prompt.find(D("</|DSML|tool_calls>")) + D("</|DSML|tool_calls>").size();
  std::string example = prompt.substr(start, end - start);
  example = absl::StrReplaceAll(example, {{"\n...\n", "\n"}});
  ParseResult r = Parse(example);
  EXPECT_TRUE(r.ok()) << r.error->ToString();
}

TEST(DsmlRender, ResultsAreOneBlockPerCallInOrder) {
  EXPECT_EQ(RenderResults({"sunny", "error: no such tool", ""}),
            "<tool_result>sunny</tool_result>\n"
            "<tool_result>error: no such tool</tool_result>\n"
            "<tool_result></tool_result>");
  EXPECT_EQ(RenderResults({}), "");
}

}  // namespace
}  // namespace dsec::client::dsml
