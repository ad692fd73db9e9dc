// Byte-level tokenizer of the rollout policy: ids 0..255 are the bytes, then
// a fixed list of special tokens (the DeepSeek chat and DSML markers).
//
// Encode matches special-token strings greedily (longest first) at every
// position and emits every other byte as its own id, so Decode(Encode(s))
// == s for any byte string s. The converse does not hold: a special token
// spelled out byte by byte decodes to the same text as its id.
//
// Immutable after construction; thread-safe.
#ifndef DSEC_ROLLOUT_POLICY_TOKENIZER_H_
#define DSEC_ROLLOUT_POLICY_TOKENIZER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace dsec::policy {

// The special tokens ("｜" is U+FF5C, "▁" is U+2581).
inline constexpr absl::string_view kBos = "<｜begin▁of▁sentence｜>";
inline constexpr absl::string_view kEos = "<｜end▁of▁sentence｜>";
inline constexpr absl::string_view kUser = "<｜User｜>";
inline constexpr absl::string_view kAssistant = "<｜Assistant｜>";
inline constexpr absl::string_view kThinkOpen = "<think>";
inline constexpr absl::string_view kThinkClose = "</think>";
inline constexpr absl::string_view kDsmlOpen = "<｜DSML｜";
inline constexpr absl::string_view kDsmlCloseOpen = "</｜DSML｜";
inline constexpr absl::string_view kToolResultOpen = "<tool_result>";
inline constexpr absl::string_view kToolResultClose = "</tool_result>";
inline constexpr absl::string_view kToolCallsOpen = "<｜DSML｜tool_calls>";
inline constexpr absl::string_view kToolCallsClose = "</｜DSML｜tool_calls>";

class Tokenizer {
 public:
  Tokenizer();  // the fixed vocabulary: 256 bytes + the specials above

  int32_t vocab_size() const;
  std::vector<int32_t> Encode(absl::string_view text) const;
  // Ids outside [0, vocab_size()) decode to nothing.
  std::string Decode(absl::Span<const int32_t> ids) const;
  // Text of one token (a single byte or a special), empty if out of range.
  absl::string_view TokenText(int32_t id) const;

  int32_t bos() const;
  int32_t eos() const;
  // The id of a special token's exact text.
  std::optional<int32_t> SpecialId(absl::string_view text) const;

 private:
  std::vector<std::string> texts_;  // [vocab]: byte strings, specials
  std::vector<int32_t> by_length_;  // special ids, longest text first
};

}  // namespace dsec::policy

#endif  // DSEC_ROLLOUT_POLICY_TOKENIZER_H_
