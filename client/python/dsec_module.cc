// `import dsec`: the Python face of the C++ client (client/client.h,
// client/trajectory.h). Every blocking call releases the GIL; run_async
// returns an asyncio future completed from a gRPC thread.
//
// Errors: the program failing is an ExecResult (exit_code, kind, ...);
// the infrastructure failing raises dsec.InfraError (a trainer masks the
// sample), or its subclass dsec.SandboxLost when the sandbox's node died
// (replay recovers); bad arguments raise ValueError.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/dsml.h"
#include "client/reward.h"
#include "client/tools.h"
#include "client/trajectory.h"

namespace py = pybind11;
using namespace dsec::client;  // NOLINT: the module mirrors the namespace

namespace {

PyObject* g_infra_error = nullptr;
PyObject* g_sandbox_lost = nullptr;

[[noreturn]] void Raise(const absl::Status& s) {
  std::string msg =
      absl::StrCat(absl::StatusCodeToString(s.code()), ": ", s.message());
  if (s.code() == absl::StatusCode::kInvalidArgument) {
    throw py::value_error(msg);
  }
  PyErr_SetString(IsSandboxLost(s) ? g_sandbox_lost : g_infra_error,
                  msg.c_str());
  throw py::error_already_set();
}

template <typename T>
T Check(absl::StatusOr<T> r) {
  if (!r.ok()) Raise(r.status());
  return std::move(*r);
}
void Check(const absl::Status& s) {
  if (!s.ok()) Raise(s);
}

using CommandArg = std::variant<std::string, std::vector<std::string>>;

Command MakeCommand(const CommandArg& cmd, double timeout,
                    std::optional<std::string> stdin_data,
                    std::map<std::string, std::string> env, std::string cwd,
                    int64_t max_output_bytes) {
  Command c = std::holds_alternative<std::string>(cmd)
                  ? Command::Shell(std::get<std::string>(cmd))
                  : Command::Argv(std::get<std::vector<std::string>>(cmd));
  if (timeout <= 0) throw py::value_error("timeout must be > 0 seconds");
  c.timeout = absl::Seconds(timeout);
  if (stdin_data) c.stdin_data = *stdin_data;
  c.env = std::move(env);
  c.cwd = std::move(cwd);
  c.max_output_bytes = max_output_bytes;
  return c;
}

dsec::v1::SandboxSpec MakeSpec(int64_t memory_mb, int64_t cpu_millicores,
                               int64_t pids, int64_t disk_mb,
                               std::map<std::string, std::string> env,
                               std::map<std::string, std::string> labels,
                               std::string image, std::string workdir,
                               std::string warm_pool_class, double ttl) {
  dsec::v1::SandboxSpec spec;
  spec.mutable_limits()->set_memory_bytes(memory_mb << 20);
  spec.mutable_limits()->set_cpu_millicores(cpu_millicores);
  spec.mutable_limits()->set_pids(pids);
  spec.mutable_limits()->set_disk_bytes(disk_mb << 20);
  for (auto& [k, v] : env) (*spec.mutable_env())[k] = v;
  for (auto& [k, v] : labels) (*spec.mutable_labels())[k] = v;
  spec.set_image(image);
  spec.set_workdir(workdir);
  spec.set_warm_pool_class(warm_pool_class);
  if (ttl > 0) spec.mutable_ttl()->set_seconds(static_cast<int64_t>(ttl));
  return spec;
}

// Sandbox.run / Trajectory.run: a blocking Run with the GIL released.
template <typename Io>
ExecOutcome RunBlocking(Io& io, const CommandArg& cmd, double timeout,
                        std::optional<std::string> stdin_data,
                        std::map<std::string, std::string> env, std::string cwd,
                        int64_t max_output_bytes) {
  Command c = MakeCommand(cmd, timeout, std::move(stdin_data), std::move(env),
                          std::move(cwd), max_output_bytes);
  absl::StatusOr<ExecOutcome> r;
  {
    py::gil_scoped_release release;
    r = io.Run(c);
  }
  return Check(std::move(r));
}

// write_file / read_file of Sandbox and Trajectory: str or bytes in, bytes
// out, GIL released during the call.
template <typename Io>
void WriteFileBlocking(Io& io, const std::string& path, py::object data,
                       uint32_t mode) {
  std::string bytes = py::isinstance<py::str>(data)
                          ? data.cast<std::string>()
                          : std::string(data.cast<py::bytes>());
  py::gil_scoped_release release;
  Check(io.WriteFile(path, bytes, mode));
}

template <typename Io>
py::bytes ReadFileBlocking(Io& io, const std::string& path, int64_t max_bytes) {
  absl::StatusOr<std::string> r;
  {
    py::gil_scoped_release release;
    r = io.ReadFile(path, max_bytes);
  }
  return py::bytes(Check(std::move(r)));
}

#define SPEC_ARGS                                               \
  py::arg("memory_mb") = 512, py::arg("cpu_millicores") = 1000, \
  py::arg("pids") = 256, py::arg("disk_mb") = 512,              \
  py::arg("env") = std::map<std::string, std::string>{},        \
  py::arg("labels") = std::map<std::string, std::string>{},     \
  py::arg("image") = "", py::arg("workdir") = "",               \
  py::arg("warm_pool_class") = "", py::arg("ttl") = 0.0

#define RUN_ARGS                                                \
  py::arg("cmd"), py::kw_only(),                                \
      py::arg("timeout") = 30.0, py::arg("stdin") = py::none(), \
      py::arg("env") = std::map<std::string, std::string>{},    \
      py::arg("cwd") = "", py::arg("max_output_bytes") = int64_t{1} << 20

// JSON crosses the boundary as text through Python's json module.
py::object ToPy(const nlohmann::json& j) {
  return py::module_::import("json").attr("loads")(j.dump());
}
nlohmann::json FromPy(const py::handle& o) {
  std::string text =
      py::module_::import("json").attr("dumps")(o).cast<std::string>();
  return nlohmann::json::parse(text);
}

py::dict CallToPy(const dsml::ToolCall& c) {
  py::dict params;
  for (const auto& p : c.params) params[py::str(p.name)] = ToPy(p.value);
  py::dict d;
  d["name"] = c.name;
  d["params"] = params;
  return d;
}

py::dict ParseToPy(const dsml::ParseResult& r) {
  py::dict d;
  d["content"] = r.content;
  py::list calls;
  for (const auto& c : r.calls) calls.append(CallToPy(c));
  d["calls"] = calls;
  if (r.error) {
    py::dict e;
    e["offset"] = r.error->offset;
    e["line"] = r.error->line;
    e["column"] = r.error->column;
    e["message"] = r.error->message;
    e["text"] = r.error->ToString();
    d["error"] = e;
  } else {
    d["error"] = py::none();
  }
  return d;
}

// A reward spec from a Python dict (see dsec.reward.evaluate's doc).
reward::RewardSpec SpecFromPy(const py::dict& d) {
  reward::RewardSpec spec;
  auto get = [&](const char* key) -> py::object {
    return d.contains(key) ? py::object(d[key]) : py::object(py::none());
  };
  if (!get("image").is_none()) spec.image = get("image").cast<std::string>();
  if (!get("files").is_none()) {
    for (auto [k, v] : get("files").cast<py::dict>()) {
      std::string content = py::isinstance<py::bytes>(v)
                                ? std::string(v.cast<py::bytes>())
                                : v.cast<std::string>();
      spec.files.push_back({k.cast<std::string>(), content, 0644});
    }
  }
  const double timeout =
      get("timeout").is_none() ? 60.0 : get("timeout").cast<double>();
  if (timeout <= 0) throw py::value_error("timeout must be > 0 seconds");
  auto command = [&](const std::string& script) {
    Command c = Command::Shell(script);
    c.timeout = absl::Seconds(timeout);
    return c;
  };
  if (!get("setup").is_none()) {
    spec.setup = command(get("setup").cast<std::string>());
  }
  if (!get("command").is_none()) {
    spec.test_command = command(get("command").cast<std::string>());
  }
  static const std::map<std::string, reward::ParserKind> kParsers = {
      {"exit_code", reward::ParserKind::kExitCode},
      {"pytest", reward::ParserKind::kPytest},
      {"unittest", reward::ParserKind::kUnittest},
      {"go", reward::ParserKind::kGoTest},
      {"generic", reward::ParserKind::kGeneric},
      {"junit", reward::ParserKind::kJUnitXml}};
  std::string parser =
      get("parser").is_none() ? "exit_code" : get("parser").cast<std::string>();
  auto pit = kParsers.find(parser);
  if (pit == kParsers.end()) {
    throw py::value_error(
        "parser must be one of exit_code, pytest, "
        "unittest, go, generic, junit; got " +
        parser);
  }
  spec.parser = pit->second;
  if (!get("junit_path").is_none()) {
    spec.junit_path = get("junit_path").cast<std::string>();
  }
  std::string policy =
      get("policy").is_none() ? "fraction" : get("policy").cast<std::string>();
  if (policy == "fraction") {
    spec.policy = reward::RewardPolicy::kFractionPassed;
  } else if (policy == "all") {
    spec.policy = reward::RewardPolicy::kAllOrNothing;
  } else {
    throw py::value_error("policy must be \"fraction\" or \"all\"");
  }
  if (!get("stop_at_first_failure").is_none()) {
    spec.stop_at_first_failure = get("stop_at_first_failure").cast<bool>();
  }
  if (!get("repeat").is_none()) spec.repeat = get("repeat").cast<int>();
  if (spec.repeat < 1) throw py::value_error("repeat must be >= 1");
  if (!get("cases").is_none()) {
    for (const auto& item : get("cases").cast<py::list>()) {
      py::dict c = item.cast<py::dict>();
      reward::TestCase tc;
      if (c.contains("name")) tc.name = c["name"].cast<std::string>();
      if (c.contains("command")) {
        tc.command = command(c["command"].cast<std::string>());
      }
      if (c.contains("stdin")) tc.stdin_data = c["stdin"].cast<std::string>();
      if (c.contains("expected_stdout")) {
        tc.expected_stdout = c["expected_stdout"].cast<std::string>();
      }
      spec.cases.push_back(std::move(tc));
    }
  }
  if (spec.test_command.shell.empty() && spec.test_command.argv.empty()) {
    bool every_case_has_command = !spec.cases.empty();
    for (const auto& c : spec.cases)
      every_case_has_command &= c.command.has_value();
    if (!every_case_has_command) {
      throw py::value_error(
          "a reward spec needs \"command\" (or a "
          "command in every case)");
    }
  }
  return spec;
}

py::dict RewardToPy(const reward::RewardResult& r) {
  py::dict d;
  d["state"] = std::string(reward::EvalStateName(r.state));
  d["reward"] = r.reward;
  d["usable"] = r.usable();
  d["reason"] = r.reason;
  d["infra_error"] = r.status.ok() ? py::object(py::none())
                                   : py::object(py::str(r.status.ToString()));
  py::list tests;
  for (const auto& t : r.tests) {
    py::dict x;
    x["name"] = t.name;
    x["verdict"] = std::string(reward::VerdictName(t.verdict));
    x["message"] = t.message;
    x["flaky"] = t.flaky;
    tests.append(x);
  }
  d["tests"] = tests;
  py::dict counts;
  counts["passed"] = r.counts.passed;
  counts["failed"] = r.counts.failed;
  counts["errors"] = r.counts.errors;
  counts["skipped"] = r.counts.skipped;
  counts["not_run"] = r.counts.not_run;
  d["counts"] = counts;
  d["flaky"] = r.flaky;
  d["output_tail"] = r.output_tail;
  d["runs"] = r.runs;
  d["from_cache"] = r.from_cache;
  return d;
}

// A ToolBox with the SandboxIo it runs against kept alive.
struct PyToolBox {
  std::shared_ptr<SandboxIo> io;
  std::unique_ptr<ToolBox> box;
};
}  // namespace

PYBIND11_MODULE(dsec, m) {
  m.doc() =
      "dsec: sandboxes for agentic RL. Client -> Sandbox.run(); "
      "Trajectory for preemption-safe rollouts.";

  g_infra_error = PyErr_NewExceptionWithDoc(
      "dsec.InfraError",
      "The infrastructure failed (not the program): mask the sample.",
      PyExc_RuntimeError, nullptr);
  g_sandbox_lost = PyErr_NewExceptionWithDoc(
      "dsec.SandboxLost",
      "The sandbox is gone with its node: recreate it and replay.",
      g_infra_error, nullptr);
  m.attr("InfraError") = py::handle(g_infra_error);
  m.attr("SandboxLost") = py::handle(g_sandbox_lost);

  py::class_<ExecOutcome>(m, "ExecResult")
      .def_property_readonly("kind",
                             [](const ExecOutcome& o) {
                               return std::string(ExitKindName(o.kind));
                             })
      .def_readonly("exit_code", &ExecOutcome::exit_code)
      .def_readonly("signal", &ExecOutcome::signal)
      .def_property_readonly(
          "stdout",
          [](const ExecOutcome& o) { return py::bytes(o.stdout_data); })
      .def_property_readonly(
          "stderr",
          [](const ExecOutcome& o) { return py::bytes(o.stderr_data); })
      .def_property_readonly(
          "stdout_text",
          [](const ExecOutcome& o) {
            return py::str(PyUnicode_DecodeUTF8(
                o.stdout_data.data(), o.stdout_data.size(), "replace"));
          })
      .def_property_readonly(
          "stderr_text",
          [](const ExecOutcome& o) {
            return py::str(PyUnicode_DecodeUTF8(
                o.stderr_data.data(), o.stderr_data.size(), "replace"));
          })
      .def_readonly("stdout_truncated", &ExecOutcome::stdout_truncated)
      .def_readonly("stderr_truncated", &ExecOutcome::stderr_truncated)
      .def_property_readonly(
          "timed_out",
          [](const ExecOutcome& o) { return o.kind == ExitKind::kTimedOut; })
      .def_property_readonly(
          "oom_killed",
          [](const ExecOutcome& o) { return o.kind == ExitKind::kOomKilled; })
      .def_property_readonly("wall_time",
                             [](const ExecOutcome& o) {
                               return absl::ToDoubleSeconds(o.wall_time);
                             })
      .def_property_readonly("cpu_time",
                             [](const ExecOutcome& o) {
                               return absl::ToDoubleSeconds(o.cpu_time);
                             })
      .def_readonly("peak_memory_bytes", &ExecOutcome::peak_memory_bytes)
      .def_readonly("replayed", &ExecOutcome::replayed)
      .def_property_readonly("ok", &ExecOutcome::ok)
      .def("__repr__", [](const ExecOutcome& o) {
        return absl::StrCat("<dsec.ExecResult ", ExitKindName(o.kind),
                            " exit_code=", o.exit_code, " signal=", o.signal,
                            " stdout=", o.stdout_data.size(), "B>");
      });

  py::class_<Sandbox, std::shared_ptr<Sandbox>>(m, "Sandbox")
      .def_property_readonly("id", &Sandbox::id)
      .def_property_readonly("node_id", &Sandbox::node_id)
      .def("run", &RunBlocking<Sandbox>, RUN_ARGS,
           "Runs a shell string (/bin/sh -c) or an argv list; returns an "
           "ExecResult.")
      .def(
          "run_async",
          [](std::shared_ptr<Sandbox> s, const CommandArg& cmd, double timeout,
             std::optional<std::string> stdin_data,
             std::map<std::string, std::string> env, std::string cwd,
             int64_t max_output_bytes) {
            Command c =
                MakeCommand(cmd, timeout, std::move(stdin_data), std::move(env),
                            std::move(cwd), max_output_bytes);
            py::object loop =
                py::module_::import("asyncio").attr("get_running_loop")();
            py::object future = loop.attr("create_future")();
            auto state = std::make_shared<std::pair<py::object, py::object>>(
                loop, future);
            {
              py::gil_scoped_release release;
              s->RunAsync(c, [state](absl::StatusOr<ExecOutcome> r) {
                py::gil_scoped_acquire acquire;
                try {
                  py::object fut = state->second;
                  py::object loop = state->first;
                  py::object setter;
                  py::object value;
                  if (r.ok()) {
                    setter = py::cpp_function([fut](py::object v) {
                      if (!fut.attr("done")().cast<bool>()) {
                        fut.attr("set_result")(v);
                      }
                    });
                    value = py::cast(std::move(*r));
                  } else {
                    PyObject* type = IsSandboxLost(r.status()) ? g_sandbox_lost
                                                               : g_infra_error;
                    value =
                        py::reinterpret_steal<py::object>(PyObject_CallFunction(
                            type, "s",
                            std::string(r.status().message()).c_str()));
                    setter = py::cpp_function([fut](py::object e) {
                      if (!fut.attr("done")().cast<bool>()) {
                        fut.attr("set_exception")(e);
                      }
                    });
                  }
                  loop.attr("call_soon_threadsafe")(setter, value);
                } catch (py::error_already_set& e) {
                  // The loop is closed: nobody is waiting any more.
                  e.restore();
                  PyErr_Clear();
                }
                state->first = py::none();
                state->second = py::none();
              });
            }
            return future;
          },
          RUN_ARGS, "Like run(), as an awaitable (asyncio).")
      .def("write_file", &WriteFileBlocking<Sandbox>, py::arg("path"),
           py::arg("data"), py::arg("mode") = 0644)
      .def("read_file", &ReadFileBlocking<Sandbox>, py::arg("path"),
           py::arg("max_bytes") = int64_t{64} << 20)
      .def(
          "list_files",
          [](Sandbox& s, const std::string& path, bool recursive) {
            absl::StatusOr<std::vector<Sandbox::FileEntry>> r;
            {
              py::gil_scoped_release release;
              r = s.ListFiles(path, recursive);
            }
            py::list out;
            for (const auto& e : Check(std::move(r))) {
              py::dict d;
              d["path"] = e.path;
              d["is_dir"] = e.is_dir;
              d["size"] = e.size_bytes;
              d["mode"] = e.mode;
              out.append(d);
            }
            return out;
          },
          py::arg("path"), py::arg("recursive") = false)
      .def(
          "delete_file",
          [](Sandbox& s, const std::string& path, bool recursive) {
            py::gil_scoped_release release;
            Check(s.DeleteFile(path, recursive));
          },
          py::arg("path"), py::arg("recursive") = false)
      .def("park",
           [](Sandbox& s) {
             py::gil_scoped_release release;
             Check(s.Park());
           })
      .def("unpark",
           [](Sandbox& s) {
             py::gil_scoped_release release;
             Check(s.Unpark());
           })
      .def("snapshot",
           [](Sandbox& s) {
             py::gil_scoped_release release;
             return Check(s.Snapshot());
           })
      .def("delete", [](Sandbox& s) {
        py::gil_scoped_release release;
        Check(s.Delete());
      });

  py::class_<SandboxGroup>(m, "Group")
      .def_property_readonly("group_id", &SandboxGroup::group_id)
      .def("__len__", &SandboxGroup::size)
      .def("__getitem__",
           [](const SandboxGroup& g, size_t i) {
             if (i >= g.size()) throw py::index_error();
             return g[i];
           })
      .def_property_readonly("members", &SandboxGroup::members)
      .def(
          "run_all",
          [](SandboxGroup& g, const CommandArg& cmd, double timeout,
             std::optional<std::string> stdin_data,
             std::map<std::string, std::string> env, std::string cwd,
             int64_t max_output_bytes) {
            Command c =
                MakeCommand(cmd, timeout, std::move(stdin_data), std::move(env),
                            std::move(cwd), max_output_bytes);
            std::vector<absl::StatusOr<ExecOutcome>> results;
            {
              py::gil_scoped_release release;
              results = g.RunAll(c);
            }
            // Per member: an ExecResult, or the InfraError instance.
            py::list out;
            for (auto& r : results) {
              if (r.ok()) {
                out.append(py::cast(std::move(*r)));
              } else {
                PyObject* type =
                    IsSandboxLost(r.status()) ? g_sandbox_lost : g_infra_error;
                out.append(
                    py::reinterpret_steal<py::object>(PyObject_CallFunction(
                        type, "s", std::string(r.status().message()).c_str())));
              }
            }
            return out;
          },
          RUN_ARGS,
          "Runs on every member concurrently; returns one ExecResult (or "
          "InfraError instance) per member, in order.")
      .def("delete", [](SandboxGroup& g) {
        py::gil_scoped_release release;
        Check(g.Delete());
      });

  py::class_<Client, std::shared_ptr<Client>>(m, "Client")
      .def(py::init([](std::string controller, std::string api_key,
                       std::string job_id, double call_timeout) {
             ClientOptions o;
             o.controller = std::move(controller);
             o.api_key = std::move(api_key);
             o.job_id = std::move(job_id);
             o.call_timeout = absl::Seconds(call_timeout);
             return Check(Client::Create(o));
           }),
           py::arg("controller") = "127.0.0.1:7070", py::arg("api_key") = "",
           py::arg("job_id") = "", py::arg("call_timeout") = 60.0)
      .def(
          "create_sandbox",
          [](Client& c, int64_t memory_mb, int64_t cpu_millicores, int64_t pids,
             int64_t disk_mb, std::map<std::string, std::string> env,
             std::map<std::string, std::string> labels, std::string image,
             std::string workdir, std::string warm_pool_class, double ttl) {
            auto spec = MakeSpec(memory_mb, cpu_millicores, pids, disk_mb,
                                 std::move(env), std::move(labels), image,
                                 workdir, warm_pool_class, ttl);
            py::gil_scoped_release release;
            return Check(c.CreateSandbox(spec));
          },
          py::kw_only(), SPEC_ARGS)
      .def(
          "create_group",
          [](Client& c, int count, int64_t memory_mb, int64_t cpu_millicores,
             int64_t pids, int64_t disk_mb,
             std::map<std::string, std::string> env,
             std::map<std::string, std::string> labels, std::string image,
             std::string workdir, std::string warm_pool_class, double ttl) {
            if (count < 1) throw py::value_error("count must be >= 1");
            auto spec = MakeSpec(memory_mb, cpu_millicores, pids, disk_mb,
                                 std::move(env), std::move(labels), image,
                                 workdir, warm_pool_class, ttl);
            py::gil_scoped_release release;
            return Check(c.CreateGroup(spec, count));
          },
          py::arg("count"), py::kw_only(), SPEC_ARGS)
      .def(
          "fork",
          [](Client& c, const Sandbox& source, int count) {
            if (count < 1) throw py::value_error("count must be >= 1");
            py::gil_scoped_release release;
            return Check(c.Fork(source, count));
          },
          py::arg("sandbox"), py::arg("count"))
      .def(
          "attach",
          [](Client& c, const std::string& id) {
            py::gil_scoped_release release;
            return Check(c.Attach(id));
          },
          py::arg("sandbox_id"))
      .def("renew_lease", [](Client& c) {
        py::gil_scoped_release release;
        Check(c.RenewLease());
      });

  py::class_<Trajectory>(m, "Trajectory")
      .def(py::init([](std::shared_ptr<Client> client, std::string log_path,
                       std::string trajectory_id, int64_t memory_mb,
                       std::string base_snapshot_id, std::string sandbox_id) {
             TrajectoryOptions o;
             o.log_path = std::move(log_path);
             o.trajectory_id = std::move(trajectory_id);
             o.spec.mutable_limits()->set_memory_bytes(memory_mb << 20);
             o.base_snapshot_id = std::move(base_snapshot_id);
             o.sandbox_id = std::move(sandbox_id);
             return Check(Trajectory::Open(std::move(client), o));
           }),
           py::arg("client"), py::arg("log_path"), py::arg("trajectory_id"),
           py::kw_only(), py::arg("memory_mb") = 512,
           py::arg("base_snapshot_id") = "", py::arg("sandbox_id") = "")
      .def("run", &RunBlocking<Trajectory>, RUN_ARGS)
      .def("write_file", &WriteFileBlocking<Trajectory>, py::arg("path"),
           py::arg("data"), py::arg("mode") = 0644)
      .def("read_file", &ReadFileBlocking<Trajectory>, py::arg("path"),
           py::arg("max_bytes") = int64_t{64} << 20)
      .def("snapshot",
           [](Trajectory& t) {
             py::gil_scoped_release release;
             return Check(t.Snapshot());
           })
      .def_property_readonly("next_step", &Trajectory::next_step)
      .def_property_readonly("logged_steps", &Trajectory::logged_steps)
      .def_property_readonly("rebuilds", &Trajectory::rebuilds)
      .def_property_readonly("sandbox_id", &Trajectory::sandbox_id)
      .def("close", [](Trajectory& t) {
        py::gil_scoped_release release;
        Check(t.Close());
      });

  py::module_ dsml_m = m.def_submodule(
      "dsml", "DeepSeek DSML tool calls: parse model output, render prompts");
  dsml_m.def(
      "parse",
      [](const std::string& text) { return ParseToPy(dsml::Parse(text)); },
      py::arg("text"),
      "Parses model output. Returns {content, calls: [{name, params}], "
      "error: None | {offset, line, column, message, text}}.");
  dsml_m.def(
      "render_tools_prompt",
      [](const py::list& tools) {
        std::vector<dsml::ToolSpec> specs;
        for (const auto& t : tools) {
          py::dict d = t.cast<py::dict>();
          specs.push_back(
              {d["name"].cast<std::string>(),
               d.contains("description") ? d["description"].cast<std::string>()
                                         : std::string(),
               d.contains("parameters") ? FromPy(d["parameters"])
                                        : nlohmann::json::object()});
        }
        return dsml::RenderToolsPrompt(specs);
      },
      py::arg("tools"));
  dsml_m.def(
      "render_results",
      [](const std::vector<std::string>& outputs) {
        return dsml::RenderResults(outputs);
      },
      py::arg("outputs"));

  py::class_<PyToolBox>(m, "ToolBox",
                        "Built-in tools (bash, python, read/write/edit_file, "
                        "list_files, search_files) run in a sandbox.")
      .def(py::init([](std::shared_ptr<Sandbox> sb, int max_parallel) {
             auto t = std::make_unique<PyToolBox>();
             t->io = sb;
             t->box = std::make_unique<ToolBox>(
                 t->io.get(), ToolBoxOptions{.max_parallel = max_parallel});
             return t;
           }),
           py::arg("sandbox"), py::arg("max_parallel") = 8)
      .def(py::init([](Trajectory& traj) {
             auto t = std::make_unique<PyToolBox>();
             // A trajectory logs steps in order: calls run one at a time.
             t->box = std::make_unique<ToolBox>(
                 &traj, ToolBoxOptions{.max_parallel = 1});
             return t;
           }),
           py::arg("trajectory"), py::keep_alive<1, 2>())
      .def("specs",
           [](const PyToolBox& t) {
             py::list out;
             for (const auto& s : t.box->Specs()) {
               py::dict d;
               d["name"] = s.name;
               d["description"] = s.description;
               d["parameters"] = ToPy(s.parameters);
               out.append(d);
             }
             return out;
           })
      .def("prompt",
           [](const PyToolBox& t) {
             return dsml::RenderToolsPrompt(t.box->Specs());
           })
      .def(
          "run_text",
          [](const PyToolBox& t, const std::string& text) {
            dsml::ParseResult parsed = dsml::Parse(text);
            std::vector<ToolResult> results;
            {
              py::gil_scoped_release release;
              results = t.box->RunAll(parsed.calls);
            }
            py::dict d = ParseToPy(parsed);
            py::list rs;
            std::vector<std::string> outputs;
            bool infra = false;
            for (const auto& r : results) {
              py::dict x;
              x["tool"] = r.tool;
              x["output"] = r.output;
              x["is_error"] = r.is_error;
              x["infra_error"] =
                  r.infra_failed()
                      ? py::object(py::str(r.infra_status.ToString()))
                      : py::object(py::none());
              infra |= r.infra_failed();
              rs.append(x);
              outputs.push_back(r.output);
            }
            if (parsed.error) {
              outputs.push_back("DSML error: " + parsed.error->ToString());
            }
            d["results"] = rs;
            d["infra_failed"] = infra;
            d["rendered"] =
                outputs.empty() ? std::string() : dsml::RenderResults(outputs);
            return d;
          },
          py::arg("text"),
          "Parses model output, runs its tool calls, and returns the parse, "
          "one result per call, and the <tool_result> blocks for the next "
          "turn (a DSML error becomes a result the model can read).");

  py::module_ reward_m = m.def_submodule(
      "reward", "Execution rewards: run tests in a sandbox, parse, score");
  const char* kSpecDoc =
      "spec: dict with command (shell), optional files {path: text}, setup, "
      "parser (exit_code|pytest|unittest|go|generic|junit), junit_path, "
      "policy (fraction|all), stop_at_first_failure, repeat (flaky "
      "detection), cases [{name, command, stdin, expected_stdout}], timeout "
      "(s), image (cache key). Returns {state, reward, usable, reason, "
      "infra_error, tests, counts, flaky, output_tail, runs, from_cache}; "
      "usable is False for infrastructure failures (mask the sample).";
  reward_m.def(
      "evaluate",
      [](std::shared_ptr<Sandbox> sb, const py::dict& spec_dict) {
        reward::RewardSpec spec = SpecFromPy(spec_dict);
        reward::RewardResult r;
        {
          py::gil_scoped_release release;
          r = reward::Evaluate(*sb, spec);
        }
        return RewardToPy(r);
      },
      py::arg("sandbox"), py::arg("spec"), kSpecDoc);
  py::class_<reward::RewardCache>(
      reward_m, "RewardCache",
      "Results keyed by (image, files, commands, parser): duplicate "
      "candidates in a group are scored once; concurrent duplicates wait "
      "for the first. Infrastructure failures are never cached.")
      .def(py::init<size_t>(), py::arg("capacity") = 4096)
      .def(
          "evaluate",
          [](reward::RewardCache& cache, std::shared_ptr<Sandbox> sb,
             const py::dict& spec_dict) {
            reward::RewardSpec spec = SpecFromPy(spec_dict);
            reward::RewardResult r;
            {
              py::gil_scoped_release release;
              r = cache.Evaluate(*sb, spec);
            }
            return RewardToPy(r);
          },
          py::arg("sandbox"), py::arg("spec"), kSpecDoc)
      .def("stats", [](reward::RewardCache& cache) {
        auto s = cache.stats();
        py::dict d;
        d["hits"] = s.hits;
        d["coalesced"] = s.coalesced;
        d["misses"] = s.misses;
        d["size"] = s.size;
        return d;
      });

  m.def(
      "create_job",
      [](std::string controller, std::string name, int max_sandboxes,
         std::string admin_key) {
        ClientOptions o;
        o.controller = std::move(controller);
        o.api_key = std::move(admin_key);
        JobInfo j;
        {
          py::gil_scoped_release release;
          j = Check(CreateJob(o, name, max_sandboxes));
        }
        return py::make_tuple(j.job_id, j.api_key);
      },
      py::arg("controller"), py::arg("name"), py::arg("max_sandboxes") = 1000,
      py::arg("admin_key") = "", "Creates a job; returns (job_id, api_key).");
}
