// dsecctl's commands, as a library so tests drive them without a process:
// Run(args, out, err) parses a command line (after global flags) and returns
// the process exit code: 0 ok, 1 the operation failed (message on `err`),
// 2 usage error.
//
//   nodes list | cordon NODE | uncordon NODE | drain NODE
//   sandboxes list [--job J] [--state S] | inspect ID | delete ID... |
//             delete --job J (progress bar) | exec ID -- CMD...
//   jobs create NAME [--max_sandboxes N] [--cpu C] [--memory M]
//                    [--weight W] [--priority P] [--lease_ttl 10m]
//        list | quota JOB [--max_sandboxes ...] | renew JOB | delete JOB
//   stats
//   demo [--count N]   a short rollout against a running cluster
//   fs ... | image ...  dsec-fs (see ctl/fs_commands.h)
//
// Output: aligned tables for people; with Output::kJson one JSON document
// per command (protobuf's JSON mapping) for scripts.
#ifndef DSEC_CTL_COMMANDS_H_
#define DSEC_CTL_COMMANDS_H_

#include <ostream>
#include <string>
#include <vector>

#include "ctl/rpc.h"

namespace dsec::ctl {

enum class Output { kTable, kJson };

struct CommandContext {
  ConnOptions conn;
  Output output = Output::kTable;
  bool progress = true;  // progress bars on stderr for batch work
  // dsec-fs meta server (fs and image commands).
  std::string fs_meta = "127.0.0.1:9400";
};

int Run(const CommandContext& ctx, const std::vector<std::string>& args,
        std::ostream& out, std::ostream& err);

// The demo rollout: a job, a GRPO-style group of `count` sandboxes, code run
// in each, an isolation check, results printed, everything deleted.
int RunDemo(const CommandContext& ctx, int count, std::ostream& out,
            std::ostream& err);

// Prints rows as an aligned table (first row is the header).
void PrintTable(const std::vector<std::vector<std::string>>& rows,
                std::ostream& out);

}  // namespace dsec::ctl

#endif  // DSEC_CTL_COMMANDS_H_
