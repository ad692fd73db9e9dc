// The built-in tools a model calls through DSML, run inside a sandbox via
// SandboxIo:
//
//   bash         command [, timeout]              bash -c, stdout/stderr/exit
//   python       code [, timeout]                 python3 reading code on stdin
//   read_file    path [, offset, limit]           a window of lines
//   write_file   path, content                    create or replace
//   edit_file    path, old_string, new_string [, replace_all]
//                                                 exact-string replacement
//   list_files   [path, depth]                    sorted tree, dirs end in '/'
//   search_files pattern [, path, include]        grep -rnIE in the sandbox
//
// Every result is text for the model. Cut output ends with a note saying
// so ("[output truncated: 65536 of 200000 bytes shown]"); exit codes,
// signals and timeouts are spelled out ("[exit code: 1]").
//
// Three outcomes, kept apart for the trainer:
//   - success: is_error false.
//   - tool error: is_error true, output says why (bad or missing argument,
//     unknown tool, file not found, old_string not unique, a command that
//     did not exit 0). The model caused it; score it.
//   - infrastructure failure: infra_status non-OK (SandboxIo returned a
//     Status other than the file errors NOT_FOUND, FAILED_PRECONDITION and
//     PERMISSION_DENIED, which are tool errors). The sample should be
//     masked; is_error is also true and output holds a placeholder.
//
// Thread-safe: a ToolBox holds no mutable state; parallel calls of one
// turn run concurrently, so calls that touch the same file race exactly as
// the model asked them to.
#ifndef DSEC_CLIENT_TOOLS_H_
#define DSEC_CLIENT_TOOLS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/dsml.h"
#include "client/sandbox_io.h"

namespace dsec::client {

struct ToolLimits {
  // Bytes of output a result shows: per stream for bash/python, the whole
  // text for the others.
  int64_t max_output_bytes = int64_t{64} << 10;
  // bash/python: used when no timeout is given; larger ones are lowered.
  absl::Duration default_timeout = absl::Seconds(30);
  absl::Duration max_timeout = absl::Minutes(10);
  // Commands the file tools run (find, grep, stat).
  absl::Duration fs_timeout = absl::Seconds(30);
  // read_file/edit_file read at most this much; write_file/edit_file write
  // at most this much.
  int64_t max_file_bytes = int64_t{8} << 20;
  // bash command / python code size (an argv string is capped at 128 KiB).
  int64_t max_code_bytes = int64_t{64} << 10;
  int64_t default_read_lines = 2000;
  int default_list_depth = 2;
  int max_list_depth = 8;
  int max_list_entries = 1000;
  int max_search_matches = 500;
};

struct ToolBoxOptions {
  ToolLimits limits;
  // Parallel calls of one turn run on up to this many threads (1: in order,
  // one at a time).
  int max_parallel = 8;
};

struct ToolResult {
  std::string tool;    // the name called
  std::string output;  // what the model sees
  bool is_error = false;
  absl::Status infra_status;  // non-OK: infrastructure failure, mask

  bool infra_failed() const { return !infra_status.ok(); }
};

class ToolBox {
 public:
  // `io` is not owned and must outlive the ToolBox.
  explicit ToolBox(SandboxIo* io, ToolBoxOptions options = {});

  // Names, descriptions and JSON schemas of the built-in tools, for
  // dsml::RenderToolsPrompt. Deterministic.
  std::vector<dsml::ToolSpec> Specs() const;

  // Runs one call; never fails other than through the result.
  ToolResult Run(const dsml::ToolCall& call) const;
  // One result per call, in call order.
  std::vector<ToolResult> RunAll(
      const std::vector<dsml::ToolCall>& calls) const;

 private:
  SandboxIo* io_;
  ToolBoxOptions options_;
};

}  // namespace dsec::client

#endif  // DSEC_CLIENT_TOOLS_H_
