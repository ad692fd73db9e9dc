// Internal to dsec_policy: the 64-bit checksum of model files, write-ahead
// logs and prompts. Not cryptographic; catches corruption and mix-ups.
#ifndef DSEC_ROLLOUT_POLICY_HASH_H_
#define DSEC_ROLLOUT_POLICY_HASH_H_

#include <cstdint>
#include <cstring>

#include "absl/strings/string_view.h"

namespace dsec::policy::internal {

inline uint64_t Mix64(uint64_t z) {  // splitmix64 finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Hash of `data`, continuing from `seed` (Hash64(b, Hash64(a)) is not
// Hash64(a + b); callers chain pieces in a fixed order).
inline uint64_t Hash64(absl::string_view data, uint64_t seed = 0) {
  uint64_t h = Mix64(seed ^ 0x9e3779b97f4a7c15ULL ^ data.size());
  size_t i = 0;
  for (; i + 8 <= data.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, data.data() + i, 8);
    h = (h ^ Mix64(w)) * 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  if (i < data.size()) std::memcpy(&tail, data.data() + i, data.size() - i);
  return Mix64(h ^ Mix64(tail + data.size()));
}

}  // namespace dsec::policy::internal

#endif  // DSEC_ROLLOUT_POLICY_HASH_H_
