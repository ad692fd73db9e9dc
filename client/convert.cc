#include "client/convert.h"

namespace dsec::client {

dsec::v1::ExecRequest ToExecRequest(const Command& c) {
  dsec::v1::ExecRequest r;
  if (!c.shell.empty()) {
    r.set_shell(c.shell);
  } else {
    for (const auto& a : c.argv) r.mutable_argv()->add_args(a);
  }
  r.set_stdin_data(c.stdin_data);
  for (const auto& [k, v] : c.env) (*r.mutable_env())[k] = v;
  r.set_cwd(c.cwd);
  *r.mutable_timeout() = ToProtoDuration(c.timeout);
  r.set_max_stdout_bytes(c.max_output_bytes);
  r.set_max_stderr_bytes(c.max_output_bytes);
  r.set_action_id(c.action_id);
  return r;
}

Command FromExecRequest(const dsec::v1::ExecRequest& r) {
  Command c;
  if (r.has_argv()) {
    c.argv.assign(r.argv().args().begin(), r.argv().args().end());
  } else {
    c.shell = r.shell();
  }
  c.stdin_data = r.stdin_data();
  for (const auto& [k, v] : r.env()) c.env[k] = v;
  c.cwd = r.cwd();
  c.timeout = FromProtoDuration(r.timeout());
  c.max_output_bytes = r.max_stdout_bytes();
  c.action_id = r.action_id();
  return c;
}

}  // namespace dsec::client
