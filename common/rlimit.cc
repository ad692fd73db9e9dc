#include "common/rlimit.h"

#include <sys/resource.h>

#include <fstream>

namespace dsec {

int64_t RaiseOpenFileLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  rlim_t nr_open = 1 << 20;
  std::ifstream("/proc/sys/fs/nr_open") >> nr_open;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < nr_open) {
    rlimit wanted{nr_open, nr_open};
    if (setrlimit(RLIMIT_NOFILE, &wanted) == 0)
      return static_cast<int64_t>(nr_open);
  }
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  return static_cast<int64_t>(rl.rlim_cur);
}

}  // namespace dsec
