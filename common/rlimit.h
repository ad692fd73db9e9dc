// Process resource limits servers adjust at start-up.
#ifndef DSEC_COMMON_RLIMIT_H_
#define DSEC_COMMON_RLIMIT_H_

#include <cstdint>

namespace dsec {

// Raises RLIMIT_NOFILE as far as allowed: the hard limit to fs.nr_open when
// the process may (CAP_SYS_RESOURCE), then the soft limit to the hard one.
// An agent holds a few host fds per live sandbox. Returns the soft limit now
// in effect. Thread-safe; call early in main().
int64_t RaiseOpenFileLimit();

}  // namespace dsec

#endif  // DSEC_COMMON_RLIMIT_H_
