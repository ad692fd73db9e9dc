#include "client/tools.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "client/testing/host_sandbox_io.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::client {
namespace {

using dsml::MakeJsonParameter;
using dsml::MakeStringParameter;
using dsml::Parameter;
using dsml::ToolCall;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::StartsWith;

ToolCall Call(std::string name, std::vector<Parameter> params) {
  return ToolCall{std::move(name), std::move(params)};
}

// A SandboxIo whose infrastructure is down.
class BrokenSandboxIo : public SandboxIo {
 public:
  absl::StatusOr<ExecOutcome> Run(const Command&) override {
    return absl::UnavailableError("node lost");
  }
  absl::Status WriteFile(absl::string_view, absl::string_view,
                         uint32_t) override {
    return absl::UnavailableError("node lost");
  }
  absl::StatusOr<std::string> ReadFile(absl::string_view, int64_t,
                                       bool*) override {
    return absl::UnavailableError("node lost");
  }
};

class ToolsTest : public ::testing::Test {
 protected:
  ToolsTest() : io_(dir_.path()) {}

  ToolResult Run(ToolCall call, ToolLimits limits = {}) {
    ToolBoxOptions options;
    options.limits = limits;
    return ToolBox(&io_, options).Run(call);
  }
  void Put(const std::string& path, const std::string& content) {
    ASSERT_TRUE(io_.WriteFile(path, content).ok());
  }
  std::string Get(const std::string& path) {
    std::ifstream f(io_.HostPath(path), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  ::dsec::testing::TempDir dir_;
  testing::HostSandboxIo io_;
};

// ---- bash / python ----------------------------------------------------------

TEST_F(ToolsTest, BashReturnsStdoutAndExitCode) {
  ToolResult r =
      Run(Call("bash", {MakeStringParameter("command", "echo hi; pwd")}));
  EXPECT_FALSE(r.is_error);
  EXPECT_FALSE(r.infra_failed());
  EXPECT_EQ(r.tool, "bash");
  EXPECT_EQ(r.output, "hi\n" + dir_.path() + "\n[exit code: 0]");
}

TEST_F(ToolsTest, BashReportsStderrAndNonZeroExit) {
  ToolResult r = Run(Call(
      "bash",
      {MakeStringParameter("command", "echo out; echo oops >&2; exit 3")}));
  EXPECT_TRUE(r.is_error);
  EXPECT_FALSE(r.infra_failed());
  EXPECT_EQ(r.output, "out\n[stderr]\noops\n[exit code: 3]");
}

TEST_F(ToolsTest, BashTimeoutKillsAndSaysSo) {
  ToolResult r = Run(Call("bash", {MakeStringParameter("command", "sleep 20"),
                                   MakeJsonParameter("timeout", 0.3)}));
  EXPECT_TRUE(r.is_error);
  EXPECT_EQ(r.output, "[timed out after 300ms; the command was killed]");
}

TEST_F(ToolsTest, BashTimeoutAboveTheMaximumIsLowered) {
  ToolLimits limits;
  limits.max_timeout = absl::Seconds(5);
  ToolResult r = Run(Call("bash", {MakeStringParameter("command", "true"),
                                   MakeJsonParameter("timeout", 3600)}),
                     limits);
  EXPECT_EQ(r.output, "[timeout lowered to the maximum, 5s]\n[exit code: 0]");
}

TEST_F(ToolsTest, BashSignalIsNamed) {
  ToolResult r =
      Run(Call("bash", {MakeStringParameter("command", "kill -TERM $$")}));
  EXPECT_EQ(r.output, "[killed by signal 15 (SIGTERM)]");
}

TEST_F(ToolsTest, BashOutputIsCutWithANote) {
  ToolLimits limits;
  limits.max_output_bytes = 1000;
  ToolResult r =
      Run(Call("bash", {MakeStringParameter(
                           "command", "head -c 5000 /dev/zero | tr '\\0' a")}),
          limits);
  EXPECT_EQ(r.output, std::string(1000, 'a') +
                          "\n[stdout truncated: first 1000 bytes shown]\n"
                          "[exit code: 0]");
}

TEST_F(ToolsTest, BashRefusesOversizedCommand) {
  ToolLimits limits;
  limits.max_code_bytes = 10;
  ToolResult r =
      Run(Call("bash", {MakeStringParameter("command", "echo 0123456789")}),
          limits);
  EXPECT_TRUE(r.is_error);
  EXPECT_THAT(r.output, StartsWith("error: the code is 15 bytes; the limit "
                                   "is 10."));
}

TEST_F(ToolsTest, PythonRunsCodeFromStdin) {
  ToolResult r =
      Run(Call("python", {MakeStringParameter("code",
                                              "import sys\nprint(6 * 7)\n"
                                              "print('é', file=sys.stderr)")}));
  EXPECT_FALSE(r.is_error);
  EXPECT_EQ(r.output, "42\n[stderr]\né\n[exit code: 0]");
}

TEST_F(ToolsTest, PythonExceptionShowsTracebackAndExitCode) {
  ToolResult r = Run(
      Call("python", {MakeStringParameter("code", "raise ValueError('x')")}));
  EXPECT_TRUE(r.is_error);
  EXPECT_THAT(r.output, HasSubstr("ValueError: x"));
  EXPECT_THAT(r.output, EndsWith("[exit code: 1]"));
}

// ---- files -----------------------------------------------------------------

TEST_F(ToolsTest, ReadFileReturnsTheText) {
  Put("/a.txt", "one\ntwo\n");
  ToolResult r =
      Run(Call("read_file", {MakeStringParameter("path", "/a.txt")}));
  EXPECT_FALSE(r.is_error);
  EXPECT_EQ(r.output, "one\ntwo");
}

TEST_F(ToolsTest, ReadFileWindowSaysWhichLinesAndHowToGoOn) {
  Put("n.txt", "1\n2\n3\n4\n5\n6");
  ToolResult r = Run(Call("read_file", {MakeStringParameter("path", "n.txt"),
                                        MakeJsonParameter("offset", 2),
                                        MakeJsonParameter("limit", 3)}));
  EXPECT_EQ(r.output, "2\n3\n4\n[lines 2-4 of 6 shown; offset=5 reads on]");
  r = Run(Call("read_file", {MakeStringParameter("path", "n.txt"),
                             MakeJsonParameter("offset", 5)}));
  EXPECT_EQ(r.output, "5\n6\n[lines 5-6 of 6 shown]");
}

TEST_F(ToolsTest, ReadFileOutputIsCutWithANote) {
  ToolLimits limits;
  limits.max_output_bytes = 1000;
  Put("big", std::string(5000, 'x'));
  ToolResult r =
      Run(Call("read_file", {MakeStringParameter("path", "big")}), limits);
  EXPECT_EQ(r.output, std::string(1000, 'x') +
                          "\n[output truncated: 1000 of 5000 bytes "
                          "shown]");
}

TEST_F(ToolsTest, ReadFileErrorsAreToolErrors) {
  Put("n.txt", "1\n2\n");
  Put("bin", std::string("a\0b", 3));
  Put("d/x", "");
  auto read = [&](std::vector<Parameter> params) {
    return Run(Call("read_file", std::move(params)));
  };
  ToolResult missing = read({MakeStringParameter("path", "nope")});
  EXPECT_TRUE(missing.is_error);
  EXPECT_FALSE(missing.infra_failed());
  EXPECT_EQ(missing.output, "error: nope: no such file or directory");
  EXPECT_EQ(read({MakeStringParameter("path", "d")}).output,
            "error: d is a directory; use list_files");
  EXPECT_EQ(read({MakeStringParameter("path", "n.txt"),
                  MakeJsonParameter("offset", 9)})
                .output,
            "error: offset 9 is past the end of n.txt, which has 2 lines");
  EXPECT_THAT(read({MakeStringParameter("path", "bin")}).output,
              HasSubstr("looks like a binary file"));
  EXPECT_EQ(read({MakeStringParameter("path", "d/x")}).output,
            "[the file is empty]");
}

TEST_F(ToolsTest, WriteFileCreatesParentsAndReplaces) {
  ToolResult r =
      Run(Call("write_file", {MakeStringParameter("path", "/p/q/r.txt"),
                              MakeStringParameter("content", "héllo\n")}));
  EXPECT_FALSE(r.is_error);
  EXPECT_EQ(r.output, "wrote 7 bytes to /p/q/r.txt");
  EXPECT_EQ(Get("p/q/r.txt"), "héllo\n");
  Run(Call("write_file", {MakeStringParameter("path", "/p/q/r.txt"),
                          MakeStringParameter("content", "x")}));
  EXPECT_EQ(Get("p/q/r.txt"), "x");
}

TEST_F(ToolsTest, EditFileReplacesAUniqueString) {
  Put("f.py", "a = 1\nb = 2\n");
  ToolResult r =
      Run(Call("edit_file", {MakeStringParameter("path", "f.py"),
                             MakeStringParameter("old_string", "b = 2"),
                             MakeStringParameter("new_string", "b = 3")}));
  EXPECT_FALSE(r.is_error) << r.output;
  EXPECT_EQ(r.output, "replaced 1 occurrence in f.py");
  EXPECT_EQ(Get("f.py"), "a = 1\nb = 3\n");
}

TEST_F(ToolsTest, EditFileRefusesAmbiguousOrMissingStrings) {
  Put("f.py", "x = 1\nx = 1\n");
  auto edit = [&](std::string old_string, std::vector<Parameter> more = {}) {
    std::vector<Parameter> params = {
        MakeStringParameter("path", "f.py"),
        MakeStringParameter("old_string", std::move(old_string)),
        MakeStringParameter("new_string", "y = 2")};
    for (Parameter& p : more) params.push_back(std::move(p));
    return Run(Call("edit_file", std::move(params)));
  };
  ToolResult twice = edit("x = 1");
  EXPECT_TRUE(twice.is_error);
  EXPECT_EQ(twice.output,
            "error: old_string occurs 2 times in f.py; include more "
            "surrounding lines to make it unique, or pass replace_all=true to "
            "replace every occurrence");
  ToolResult missing = edit("z = 1");
  EXPECT_TRUE(missing.is_error);
  EXPECT_THAT(missing.output,
              StartsWith("error: old_string was not found in f.py"));
  EXPECT_EQ(Get("f.py"), "x = 1\nx = 1\n");  // untouched
  ToolResult all = edit("x = 1", {MakeJsonParameter("replace_all", true)});
  EXPECT_EQ(all.output, "replaced 2 occurrences in f.py");
  EXPECT_EQ(Get("f.py"), "y = 2\ny = 2\n");
}

TEST_F(ToolsTest, EditFileKeepsTheFileMode) {
  Put("run.sh", "#!/bin/sh\necho old\n");
  ASSERT_EQ(chmod(io_.HostPath("run.sh").c_str(), 0755), 0);
  Run(Call("edit_file", {MakeStringParameter("path", "run.sh"),
                         MakeStringParameter("old_string", "old"),
                         MakeStringParameter("new_string", "new")}));
  struct stat st;
  ASSERT_EQ(stat(io_.HostPath("run.sh").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
  ToolResult r =
      Run(Call("bash", {MakeStringParameter("command", "./run.sh")}));
  EXPECT_EQ(r.output, "new\n[exit code: 0]");
}

TEST_F(ToolsTest, ListFilesShowsASortedTreeToTheDepth) {
  Put("src/a.py", "");
  Put("src/deep/er/x", "");
  Put("README", "");
  ToolResult r = Run(Call("list_files", {}));
  EXPECT_FALSE(r.is_error);
  EXPECT_EQ(r.output, "README\nsrc/\nsrc/a.py\nsrc/deep/");
  r = Run(Call("list_files", {MakeStringParameter("path", "src"),
                              MakeJsonParameter("depth", 3)}));
  EXPECT_EQ(r.output, "a.py\ndeep/\ndeep/er/\ndeep/er/x");
}

TEST_F(ToolsTest, ListFilesLimitsEntriesAndReportsBadPaths) {
  for (int i = 0; i < 5; ++i) Put("d/f" + std::to_string(i), "");
  ToolLimits limits;
  limits.max_list_entries = 3;
  ToolResult r =
      Run(Call("list_files", {MakeStringParameter("path", "d")}), limits);
  EXPECT_EQ(r.output, "f0\nf1\nf2\n[listing truncated: 3 of 5 entries shown]");
  EXPECT_EQ(
      Run(Call("list_files", {MakeStringParameter("path", "nope")})).output,
      "error: nope: no such file or directory");
  EXPECT_EQ(
      Run(Call("list_files", {MakeStringParameter("path", "d/f0")})).output,
      "error: d/f0 is not a directory; use read_file");
  EXPECT_EQ(Run(Call("list_files", {MakeJsonParameter("depth", 0)})).output,
            "error: depth must be between 1 and 8");
  Put("empty/.keep", "");
  ASSERT_EQ(unlink(io_.HostPath("empty/.keep").c_str()), 0);
  EXPECT_EQ(
      Run(Call("list_files", {MakeStringParameter("path", "empty")})).output,
      "[empty directory]");
}

TEST_F(ToolsTest, SearchFilesFindsMatchingLines) {
  Put("src/a.py", "def foo():\n    return 1\n");
  Put("src/b.txt", "foo bar\n");
  ToolResult r =
      Run(Call("search_files", {MakeStringParameter("pattern", "fo+"),
                                MakeStringParameter("path", "src"),
                                MakeStringParameter("include", "*.py")}));
  EXPECT_FALSE(r.is_error) << r.output;
  EXPECT_EQ(r.output, "src/a.py:1:def foo():");
  r = Run(Call("search_files", {MakeStringParameter("pattern", "nothing")}));
  EXPECT_FALSE(r.is_error);
  EXPECT_EQ(r.output, "no matches for /nothing/ in .");
  r = Run(Call("search_files", {MakeStringParameter("pattern", "a(")}));
  EXPECT_TRUE(r.is_error);
  EXPECT_THAT(r.output,
              StartsWith("error: search failed [exit code: 2]: grep:"));
}

TEST_F(ToolsTest, SearchFilesLimitsMatches) {
  std::string many;
  for (int i = 0; i < 10; ++i) many += "hit\n";
  Put("m.txt", many);
  ToolLimits limits;
  limits.max_search_matches = 4;
  ToolResult r =
      Run(Call("search_files", {MakeStringParameter("pattern", "hit"),
                                MakeStringParameter("path", "m.txt")}),
          limits);
  EXPECT_EQ(r.output,
            "1:hit\n2:hit\n3:hit\n4:hit\n[search truncated: 4 of 10 matching "
            "lines shown]");
}

// ---- arguments, dispatch, order
// ----------------------------------------------

TEST_F(ToolsTest, BadArgumentsAreToolErrorsNamingTheProblem) {
  auto error = [&](ToolCall call) {
    ToolResult r = Run(std::move(call));
    EXPECT_TRUE(r.is_error);
    EXPECT_FALSE(r.infra_failed());
    return r.output;
  };
  EXPECT_EQ(error(Call("bash", {})),
            "error: tool bash needs parameter \"command\" (string)");
  EXPECT_EQ(error(Call("bash", {MakeStringParameter("command", "true"),
                                MakeStringParameter("timeout", "10")})),
            "error: parameter \"timeout\" of tool bash must be a number, got "
            "string \"10\" (write non-string values with string=\"false\")");
  EXPECT_EQ(error(Call("read_file", {MakeJsonParameter("path", 7)})),
            "error: parameter \"path\" of tool read_file must be a string, "
            "got number 7");
  EXPECT_EQ(error(Call("read_file", {MakeStringParameter("path", "x"),
                                     MakeJsonParameter("limit", 2.5)})),
            "error: parameter \"limit\" of tool read_file must be an integer, "
            "got number 2.5 (write non-string values with string=\"false\")");
  EXPECT_EQ(error(Call("bash", {MakeStringParameter("command", "true"),
                                MakeStringParameter("cwd", "/")})),
            "error: unknown parameter \"cwd\" for tool bash; its parameters "
            "are: command, timeout");
  EXPECT_EQ(error(Call("bash", {MakeStringParameter("command", "true"),
                                MakeJsonParameter("timeout", -1)})),
            "error: timeout must be a positive number of seconds");
  EXPECT_EQ(io_.runs(), 0);  // nothing ran
}

TEST_F(ToolsTest, UnknownToolListsTheAvailableOnes) {
  ToolResult r = Run(Call("browse", {}));
  EXPECT_TRUE(r.is_error);
  EXPECT_EQ(r.tool, "browse");
  EXPECT_EQ(r.output,
            "error: unknown tool \"browse\"; available tools: bash, python, "
            "read_file, write_file, edit_file, list_files, search_files");
}

TEST_F(ToolsTest, ParallelCallsRunConcurrentlyAndResultsKeepCallOrder) {
  // The first call can only finish if the second runs while it waits.
  std::vector<ToolCall> calls = {
      Call("bash", {MakeStringParameter(
                       "command",
                       "for i in $(seq 200); do [ -e flag ] && echo saw && "
                       "exit 0; sleep 0.05; done; echo gave up; exit 1")}),
      Call("bash", {MakeStringParameter("command", "touch flag; echo made")}),
      Call("nope", {}),
      Call("read_file", {MakeStringParameter("path", "missing")})};
  std::vector<ToolResult> results = ToolBox(&io_).RunAll(calls);
  ASSERT_EQ(results.size(), 4u);
  EXPECT_EQ(results[0].output, "saw\n[exit code: 0]");
  EXPECT_EQ(results[1].output, "made\n[exit code: 0]");
  EXPECT_EQ(results[2].tool, "nope");
  EXPECT_THAT(results[2].output, StartsWith("error: unknown tool"));
  EXPECT_EQ(results[3].tool, "read_file");
  EXPECT_TRUE(results[3].is_error);
}

TEST_F(ToolsTest, SequentialModeRunsInOrder) {
  ToolBoxOptions options;
  options.max_parallel = 1;
  std::vector<ToolResult> results =
      ToolBox(&io_, options)
          .RunAll(
              {Call("bash", {MakeStringParameter("command", "echo 1 >> log")}),
               Call("bash", {MakeStringParameter("command", "echo 2 >> log")}),
               Call("read_file", {MakeStringParameter("path", "log")})});
  EXPECT_EQ(results[2].output, "1\n2");
}

TEST(ToolBoxInfra, InfrastructureFailuresAreMarkedForMasking) {
  BrokenSandboxIo io;
  std::vector<ToolResult> results = ToolBox(&io).RunAll(
      {Call("bash", {MakeStringParameter("command", "true")}),
       Call("read_file", {MakeStringParameter("path", "x")}),
       Call("write_file", {MakeStringParameter("path", "x"),
                           MakeStringParameter("content", "")}),
       Call("bash", {})});
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(results[i].infra_failed()) << i;
    EXPECT_EQ(results[i].infra_status.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(results[i].output, HasSubstr("infrastructure"));
  }
  // Bad arguments are the model's fault even when the sandbox is down.
  EXPECT_FALSE(results[3].infra_failed());
  EXPECT_TRUE(results[3].is_error);
}

TEST(ToolBoxSpecs, DescribeEveryToolWithAJsonSchema) {
  BrokenSandboxIo io;
  std::vector<dsml::ToolSpec> specs = ToolBox(&io).Specs();
  std::vector<std::string> names;
  for (const dsml::ToolSpec& s : specs) names.push_back(s.name);
  EXPECT_THAT(
      names, ::testing::ElementsAre("bash", "python", "read_file", "write_file",
                                    "edit_file", "list_files", "search_files"));
  const nlohmann::json& edit = specs[4].parameters;
  EXPECT_EQ(edit["type"], "object");
  EXPECT_EQ(edit["required"],
            nlohmann::json::parse(R"(["path","old_string","new_string"])"));
  EXPECT_EQ(edit["properties"]["replace_all"]["type"], "boolean");
  EXPECT_EQ(specs[0].parameters["properties"]["timeout"]["type"], "number");
  std::string prompt = dsml::RenderToolsPrompt(specs);
  EXPECT_THAT(prompt, HasSubstr("{\"name\":\"search_files\""));
}

}  // namespace
}  // namespace dsec::client
