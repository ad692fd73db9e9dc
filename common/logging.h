// Process-wide logging to stderr through spdlog.
//
// Servers call InitLogging once from main(); libraries just use the LOG_*
// macros below (spdlog's default logger, thread-safe). Errors travel as
// absl::Status values and are logged once, where they are handled.
#ifndef DSEC_COMMON_LOGGING_H_
#define DSEC_COMMON_LOGGING_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "spdlog/spdlog.h"

namespace dsec {

struct LoggingOptions {
  // trace, debug, info, warn, error, critical, off.
  absl::string_view level = "info";
  // Shown in every line, e.g. "agent" or "controller".
  absl::string_view component = "dsec";
};

// Sends the default logger to stderr with a "time level component tid" prefix.
// Idempotent; the last call's options win.
absl::Status InitLogging(const LoggingOptions& options);

}  // namespace dsec

#define DSEC_LOG_TRACE(...) SPDLOG_TRACE(__VA_ARGS__)
#define DSEC_LOG_DEBUG(...) SPDLOG_DEBUG(__VA_ARGS__)
#define DSEC_LOG_INFO(...) SPDLOG_INFO(__VA_ARGS__)
#define DSEC_LOG_WARN(...) SPDLOG_WARN(__VA_ARGS__)
#define DSEC_LOG_ERROR(...) SPDLOG_ERROR(__VA_ARGS__)

#endif  // DSEC_COMMON_LOGGING_H_
