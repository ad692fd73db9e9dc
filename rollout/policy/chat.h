// Chat encoding of the rollout policy, DeepSeek-V4 style:
//
//   BOS [effort prefix (kMax)] system text ["\n\n"] [tools prompt]
//   then per turn:
//     user       "<｜User｜>" content
//     tool       "<｜User｜>" content          (consecutive tool messages
//                                              joined with "\n")
//     assistant  "<｜Assistant｜>" head content tool_calls EOS
//   generation prompt: "<｜Assistant｜>" then "</think>" (kNonThink) or
//   "<think>" (kHigh, kMax)
//
// where an assistant turn's head is "<think>" reasoning "</think>" when
// thinking is on and the turn comes after the last user message
// (interleaved thinking: the reasoning of a tool loop stays in the prompt),
// else "</think>" (non-think, or reasoning of an earlier exchange, which is
// dropped). So within a tool loop every prompt extends the previous prompt
// plus the generated reply (append-only), which keeps the KV cache valid.
//
// Free functions; thread-safe.
#ifndef DSEC_ROLLOUT_POLICY_CHAT_H_
#define DSEC_ROLLOUT_POLICY_CHAT_H_

#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "client/dsml.h"

namespace dsec::policy {

enum class ThinkingMode { kNonThink, kHigh, kMax };

// Put before the system prompt in kMax mode.
inline constexpr absl::string_view kMaxEffortPrefix =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively "
    "decompose the problem to resolve the root cause, rigorously "
    "stress-testing your logic against all potential paths, edge cases, and "
    "adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting "
    "every intermediate step, considered alternative, and rejected "
    "hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

struct ChatMessage {
  enum class Role { kSystem, kUser, kAssistant, kTool };
  Role role = Role::kUser;
  // Text; for kTool the tool outputs, already rendered with
  // dsml::RenderResults.
  std::string content;
  std::string reasoning;   // assistant only: the thinking text
  std::string tool_calls;  // assistant only: DSML block (dsml::RenderCalls)
};

// The prompt text for `messages` (see the top of the file). System messages
// may appear anywhere; their contents are joined with "\n\n" at the top.
std::string EncodeChat(absl::Span<const ChatMessage> messages,
                       absl::Span<const client::dsml::ToolSpec> tools,
                       ThinkingMode mode, bool add_generation_prompt);

// A generated assistant reply, split. With thinking on, the text up to the
// first "</think>" is the reasoning (all of it when "</think>" never came);
// the tool calls are everything from the first "<｜DSML｜" on. A trailing
// EOS is stripped first. Rendering the parts as an assistant turn gives
// back "<｜Assistant｜>" + the prompt's thinking opener + generated.
struct ParsedReply {
  std::string reasoning, content, tool_calls;
};
ParsedReply SplitReply(absl::string_view generated, ThinkingMode mode);

}  // namespace dsec::policy

#endif  // DSEC_ROLLOUT_POLICY_CHAT_H_
