#include "fs/chain_table.h"

#include "absl/strings/str_cat.h"

namespace dsec::fs {
namespace {

// splitmix64's finalizer: a cheap, well-mixed hash of the inode id.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

bool Writes(v1::ChainMemberState state) {
  return state == v1::CHAIN_MEMBER_STATE_SERVING ||
         state == v1::CHAIN_MEMBER_STATE_SYNCING;
}

}  // namespace

uint32_t ChainIndexFor(uint64_t ino, uint32_t index, uint32_t num_chains) {
  return static_cast<uint32_t>((Mix(ino) + index) % num_chains);
}

absl::StatusOr<const v1::Chain*> ChainFor(const v1::ChainTable& table,
                                          uint64_t ino, uint32_t index) {
  if (table.chains_size() == 0) {
    return absl::FailedPreconditionError(
        "dsec-fs chain table has no chains yet: no chunk server has "
        "registered with the meta server");
  }
  return &table.chains(ChainIndexFor(ino, index, table.chains_size()));
}

std::vector<std::string> WriteOrder(const v1::Chain& chain) {
  std::vector<std::string> order;
  for (const v1::ChainMember& m : chain.members()) {
    if (Writes(m.state())) order.push_back(m.node_id());
  }
  return order;
}

std::vector<std::string> ReadReplicas(const v1::Chain& chain) {
  std::vector<std::string> out;
  for (const v1::ChainMember& m : chain.members()) {
    if (m.state() == v1::CHAIN_MEMBER_STATE_SERVING) out.push_back(m.node_id());
  }
  return out;
}

std::optional<std::string> SuccessorOf(const v1::Chain& chain,
                                       const std::string& node_id) {
  std::vector<std::string> order = WriteOrder(chain);
  for (size_t i = 0; i + 1 < order.size(); ++i) {
    if (order[i] == node_id) return order[i + 1];
  }
  return std::nullopt;
}

std::optional<std::string> PredecessorOf(const v1::Chain& chain,
                                         const std::string& node_id) {
  std::vector<std::string> order = WriteOrder(chain);
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i] == node_id) return order[i - 1];
  }
  return std::nullopt;
}

v1::ChainMemberState StateOf(const v1::Chain& chain,
                             const std::string& node_id) {
  for (const v1::ChainMember& m : chain.members()) {
    if (m.node_id() == node_id) return m.state();
  }
  return v1::CHAIN_MEMBER_STATE_UNSPECIFIED;
}

absl::StatusOr<std::string> AddressOf(const v1::ChainTable& table,
                                      const std::string& node_id) {
  for (const v1::ChunkServerInfo& s : table.servers()) {
    if (s.node_id() == node_id) return s.address();
  }
  return absl::NotFoundError(
      absl::StrCat("chunk server '", node_id, "' is not in the chain table"));
}

const v1::Chain* FindChain(const v1::ChainTable& table, uint32_t chain_id) {
  for (const v1::Chain& c : table.chains()) {
    if (c.id() == chain_id) return &c;
  }
  return nullptr;
}

}  // namespace dsec::fs
