#include "rollout/policy/tokenizer.h"

#include <algorithm>

#include "absl/strings/match.h"

namespace dsec::policy {
namespace {

// Order fixes the ids: 256 + index. Append only (ids are in saved models'
// embeddings and in write-ahead logs).
constexpr absl::string_view kSpecials[] = {
    kBos,
    kEos,
    kUser,
    kAssistant,
    kThinkOpen,
    kThinkClose,
    kDsmlOpen,
    kDsmlCloseOpen,
    kToolResultOpen,
    kToolResultClose,
    kToolCallsClose,
    kToolCallsOpen,
};
constexpr int32_t kNumBytes = 256;

}  // namespace

Tokenizer::Tokenizer() {
  texts_.reserve(kNumBytes + std::size(kSpecials));
  for (int b = 0; b < kNumBytes; ++b) {
    texts_.push_back(std::string(1, static_cast<char>(b)));
  }
  for (absl::string_view s : kSpecials) {
    by_length_.push_back(static_cast<int32_t>(texts_.size()));
    texts_.emplace_back(s);
  }
  std::stable_sort(by_length_.begin(), by_length_.end(),
                   [&](int32_t a, int32_t b) {
                     return texts_[a].size() > texts_[b].size();
                   });
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(texts_.size());
}

int32_t Tokenizer::bos() const { return kNumBytes; }
int32_t Tokenizer::eos() const { return kNumBytes + 1; }

std::vector<int32_t> Tokenizer::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    int32_t match = -1;
    if (text[i] == '<') {  // every special starts with '<'
      const absl::string_view rest = text.substr(i);
      for (int32_t id : by_length_) {
        if (absl::StartsWith(rest, texts_[id])) {
          match = id;
          break;
        }
      }
    }
    if (match >= 0) {
      ids.push_back(match);
      i += texts_[match].size();
    } else {
      ids.push_back(static_cast<unsigned char>(text[i]));
      ++i;
    }
  }
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  out.reserve(ids.size());
  for (int32_t id : ids) {
    const absl::string_view t = TokenText(id);
    out.append(t.data(), t.size());
  }
  return out;
}

absl::string_view Tokenizer::TokenText(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return texts_[id];
}

std::optional<int32_t> Tokenizer::SpecialId(absl::string_view text) const {
  for (int32_t id : by_length_) {
    if (texts_[id] == text) return id;
  }
  return std::nullopt;
}

}  // namespace dsec::policy
