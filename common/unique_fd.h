// UniqueFd: sole owner of a file descriptor, closed on destruction.
// Move-only; not thread-safe (like any value type).
#ifndef DSEC_COMMON_UNIQUE_FD_H_
#define DSEC_COMMON_UNIQUE_FD_H_

#include <unistd.h>

#include <utility>

namespace dsec {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }

  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  // Gives up ownership without closing.
  [[nodiscard]] int Release() { return std::exchange(fd_, -1); }

  // Closes the current fd (if any) and takes `fd`.
  void Reset(int fd = -1) {
    int old = std::exchange(fd_, fd);
    if (old >= 0) ::close(old);
  }

 private:
  int fd_ = -1;
};

}  // namespace dsec

#endif  // DSEC_COMMON_UNIQUE_FD_H_
