// Routing over a dsec-fs chain table (dsec/v1/fs_service.proto ChainTable):
// which chain holds a chunk, who heads it, who follows whom, who may serve
// reads. Pure functions over the proto; thread-safe.
#ifndef DSEC_FS_CHAIN_TABLE_H_
#define DSEC_FS_CHAIN_TABLE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "dsec/v1/fs_service.pb.h"

namespace dsec::fs {

// The chain id of chunk (ino, index): consecutive chunks of one file land on
// consecutive chains, starting at a chain picked by a hash of the inode, so a
// large sequential read or write fans out over every chain.
// REQUIRES: num_chains > 0.
uint32_t ChainIndexFor(uint64_t ino, uint32_t index, uint32_t num_chains);

// The chain of chunk (ino, index); FAILED_PRECONDITION if the table has no
// chains.
absl::StatusOr<const v1::Chain*> ChainFor(const v1::ChainTable& table,
                                          uint64_t ino, uint32_t index);

// Members that take part in writes, in forwarding order: SERVING, then
// SYNCING (members are kept in that order; OFFLINE ones are skipped).
std::vector<std::string> WriteOrder(const v1::Chain& chain);

// Members that may serve reads (SERVING), head first.
std::vector<std::string> ReadReplicas(const v1::Chain& chain);

// The member `node_id` forwards writes to; nullopt if it is the last writer
// or not a writing member.
std::optional<std::string> SuccessorOf(const v1::Chain& chain,
                                       const std::string& node_id);

// The member that forwards to `node_id`; nullopt for the head or a
// non-member.
std::optional<std::string> PredecessorOf(const v1::Chain& chain,
                                         const std::string& node_id);

// The state of `node_id` in `chain` (UNSPECIFIED if not a member).
v1::ChainMemberState StateOf(const v1::Chain& chain,
                             const std::string& node_id);

// The address of chunk server `node_id`; NOT_FOUND if unknown.
absl::StatusOr<std::string> AddressOf(const v1::ChainTable& table,
                                      const std::string& node_id);

// The chain with id `chain_id`; nullptr if none.
const v1::Chain* FindChain(const v1::ChainTable& table, uint32_t chain_id);

}  // namespace dsec::fs

#endif  // DSEC_FS_CHAIN_TABLE_H_
