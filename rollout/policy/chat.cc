#include "rollout/policy/chat.h"

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "rollout/policy/tokenizer.h"

namespace dsec::policy {

using Role = ChatMessage::Role;

std::string EncodeChat(absl::Span<const ChatMessage> messages,
                       absl::Span<const client::dsml::ToolSpec> tools,
                       ThinkingMode mode, bool add_generation_prompt) {
  const bool thinking = mode != ThinkingMode::kNonThink;
  std::string out(kBos);
  if (mode == ThinkingMode::kMax) absl::StrAppend(&out, kMaxEffortPrefix);
  std::string system;
  for (const ChatMessage& m : messages) {
    if (m.role != Role::kSystem) continue;
    absl::StrAppend(&system, system.empty() ? "" : "\n\n", m.content);
  }
  if (!tools.empty()) {
    absl::StrAppend(
        &system, system.empty() ? "" : "\n\n",
        client::dsml::RenderToolsPrompt(
            std::vector<client::dsml::ToolSpec>(tools.begin(), tools.end())));
  }
  out += system;

  size_t last_user = 0;
  bool any_user = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role == Role::kUser) {
      last_user = i;
      any_user = true;
    }
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    switch (m.role) {
      case Role::kSystem:
        break;
      case Role::kUser:
        absl::StrAppend(&out, kUser, m.content);
        break;
      case Role::kTool:
        if (i > 0 && messages[i - 1].role == Role::kTool) {
          absl::StrAppend(&out, "\n", m.content);
        } else {
          absl::StrAppend(&out, kUser, m.content);
        }
        break;
      case Role::kAssistant: {
        const bool keep = thinking && (!any_user || i > last_user);
        absl::StrAppend(&out, kAssistant);
        if (keep) {
          absl::StrAppend(&out, kThinkOpen, m.reasoning, kThinkClose);
        } else {
          absl::StrAppend(&out, kThinkClose);
        }
        absl::StrAppend(&out, m.content, m.tool_calls, kEos);
        break;
      }
    }
  }
  if (add_generation_prompt) {
    absl::StrAppend(&out, kAssistant, thinking ? kThinkOpen : kThinkClose);
  }
  return out;
}

ParsedReply SplitReply(absl::string_view generated, ThinkingMode mode) {
  ParsedReply reply;
  absl::ConsumeSuffix(&generated, kEos);
  if (mode != ThinkingMode::kNonThink) {
    const size_t end = generated.find(kThinkClose);
    if (end == absl::string_view::npos) {
      reply.reasoning = std::string(generated);
      return reply;
    }
    reply.reasoning = std::string(generated.substr(0, end));
    generated.remove_prefix(end + kThinkClose.size());
  }
  const size_t calls = generated.find(kDsmlOpen);
  if (calls == absl::string_view::npos) {
    reply.content = std::string(generated);
  } else {
    reply.content = std::string(generated.substr(0, calls));
    reply.tool_calls = std::string(generated.substr(calls));
  }
  return reply;
}

}  // namespace dsec::policy
