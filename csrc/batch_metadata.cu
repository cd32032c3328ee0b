// Per-forward bookkeeping of FusedL2Rec in one launch and without a host sync.
//
// FusedL2Rec stacks V views of B users into V*B sequences over the same prompts, so one
// attention mask [B, T] describes them all. Sequence s = v*B + b is user b's prompt in
// view v; packed, it occupies rows cu_seqlens[s] .. cu_seqlens[s+1]-1. Outputs (the
// torch path in l2rec_kernels/ops/batch_metadata.py defines the same values):
//   position_ids [B, T]   cumsum(mask) - 1, clamped at 0
//   last_index   [B]      index of the row's last attended token; 0 for an empty row
//   cu_seqlens   [V*B+1]  packed offsets
//   seq_view     [V*B]    s / B
//   packed_last_row [V*B] max(cu_seqlens[s+1] - 1, 0): the sequence's last packed row
//                         (for an empty sequence the row before it, or 0: always a valid
//                         row to gather from when any row exists)
//
// Design. cu_seqlens needs a prefix sum over all users, which every output that lives
// in the packed layout (cu_seqlens, packed_last_row) depends on, and a grid-wide barrier
// would need a cooperative launch. Instead every block recomputes the per-user counts
// and their prefix sum itself (phases 1-2: it reads the whole mask, B*T elements, mostly
// from L2 after the first block) and keeps them in shared memory; phase 3 then splits
// the outputs over the grid with no communication between blocks. The grid is sized to
// the output volume and kept small (kMaxBlocks), since each extra block repeats phases
// 1-2.
// Limits (checked by the caller): B <= kMetadataMaxUsers (the shared-memory prefix) and
// V*B*max(T,1) <= INT32_MAX (cu_seqlens is int32, so every packed offset fits in
// 32 bits). Indexing into [B, T] is nonetheless done in int64.
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "l2rec_kernels.h"

namespace l2rec {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kUsersPerThread = static_cast<int>(kMetadataMaxUsers / kThreads);
static_assert(kMetadataMaxUsers % kThreads == 0, "the scan gives each thread a fixed slice");
// Output elements per block before another block is worth its redundant phases 1-2.
constexpr int64_t kWorkPerBlock = int64_t{1} << 16;
constexpr int64_t kMaxBlocks = 64;
constexpr unsigned kFullWarp = 0xffffffffu;

__device__ __forceinline__ int warp_sum(int v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

// M: an unsigned integer as wide as the mask's dtype; only "nonzero" matters, so bool,
// uint8 and int8 all read as uint8_t, and so on.
template <typename M>
__global__ void __launch_bounds__(kThreads)
    batch_metadata_kernel(const M* __restrict__ mask, int users, int64_t tokens, int views,
                          MetadataOutputs out) {
  // offsets[b] = attended tokens of users < b; offsets[users] = all users' tokens.
  __shared__ int offsets[kMetadataMaxUsers + 1];
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;

  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;

  // Phase 1 (every block): attended tokens per user, one warp per user row.
  for (int b = warp; b < users; b += kWarps) {
    const M* row = mask + static_cast<int64_t>(b) * tokens;
    int count = 0;
#pragma unroll 4
    for (int64_t t = lane; t < tokens; t += 32) count += row[t] != 0 ? 1 : 0;
    count = warp_sum(count);
    if (lane == 0) offsets[b] = count;
  }
  __syncthreads();

  // Phase 2 (every block): exclusive prefix sum over users; thread i owns users
  // [i*kUsersPerThread, (i+1)*kUsersPerThread), padded with zeros past `users`.
  int items[kUsersPerThread];
#pragma unroll
  for (int i = 0; i < kUsersPerThread; ++i) {
    const int b = static_cast<int>(threadIdx.x) * kUsersPerThread + i;
    items[i] = b < users ? offsets[b] : 0;
  }
  __syncthreads();  // every count is read before any prefix overwrites it
  int all_tokens = 0;
  BlockScan(scan_storage).ExclusiveSum(items, items, all_tokens);
#pragma unroll
  for (int i = 0; i < kUsersPerThread; ++i) {
    const int b = static_cast<int>(threadIdx.x) * kUsersPerThread + i;
    if (b < users) offsets[b] = items[i];
  }
  if (threadIdx.x == 0) offsets[users] = all_tokens;
  __syncthreads();

  // Phase 3: the outputs, split over the whole grid (each element written exactly once).
  const int64_t total = offsets[users];  // attended tokens of one view
  const int64_t seqs = static_cast<int64_t>(views) * users;
  const int64_t gwarp = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * kWarps;
  const int64_t gthread = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * kThreads;

  // 3a. Per user, one warp walks the row 32 tokens at a time: the ballot of attended
  // lanes gives each lane its inclusive count (popcount of the lanes up to it), the
  // chunk's last attended token (highest set bit) and the carry to the next chunk.
  const unsigned lanes_up_to_me = (2u << lane) - 1u;  // lane 31: wraps to all ones
  for (int64_t b = gwarp; b < users; b += nwarps) {
    const M* row = mask + b * tokens;
    int64_t* pos = out.position_ids + b * tokens;
    int64_t seen = 0;
    int64_t last = 0;  // an all-padding row reports 0
    for (int64_t base = 0; base < tokens; base += 32) {  // same trip count on all lanes
      const int64_t t = base + lane;
      const bool on = t < tokens && row[t] != 0;
      const unsigned ballot = __ballot_sync(kFullWarp, on);
      if (t < tokens) {
        const int64_t p = seen + __popc(ballot & lanes_up_to_me) - 1;
        pos[t] = p > 0 ? p : 0;
      }
      if (ballot != 0u) last = base + 31 - __clz(static_cast<int>(ballot));
      seen += __popc(ballot);
    }
    if (lane == 0) out.last_index[b] = last;
  }

  // 3b. Per sequence: offsets, view and last packed row.
  for (int64_t s = gthread; s < seqs; s += nthreads) {
    const int64_t v = s / users;
    const int64_t b = s - v * users;
    const int64_t end = v * total + offsets[b + 1];
    out.cu_seqlens[s] = static_cast<int32_t>(v * total + offsets[b]);
    out.seq_view[s] = static_cast<int32_t>(v);
    out.packed_last_row[s] = end > 0 ? end - 1 : 0;
  }
  if (gthread == 0) out.cu_seqlens[seqs] = static_cast<int32_t>(views * total);
}

template <typename M>
cudaError_t launch_typed(const void* mask, int64_t users, int64_t tokens, int64_t views,
                         const MetadataOutputs& out, cudaStream_t stream) {
  // Output elements: position_ids, last_index, then cu_seqlens, seq_view and
  // packed_last_row per sequence.
  const int64_t work = users * tokens + users + 3 * views * users + 1;
  int64_t blocks = (work + kWorkPerBlock - 1) / kWorkPerBlock;
  blocks = blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks);
  batch_metadata_kernel<M><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const M*>(mask), static_cast<int>(users), tokens, static_cast<int>(views),
      out);
  return cudaGetLastError();
}

}  // namespace

const char* launch_batch_metadata(const void* mask, int mask_elem_bytes, int64_t users,
                                  int64_t tokens, int64_t views, const MetadataOutputs& out,
                                  void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaSuccess;
  switch (mask_elem_bytes) {
    case 1:
      err = launch_typed<uint8_t>(mask, users, tokens, views, out, s);
      break;
    case 2:
      err = launch_typed<uint16_t>(mask, users, tokens, views, out, s);
      break;
    case 4:
      err = launch_typed<uint32_t>(mask, users, tokens, views, out, s);
      break;
    case 8:
      err = launch_typed<unsigned long long>(mask, users, tokens, views, out, s);
      break;
    default:
      return "attention_mask element width must be 1, 2, 4 or 8 bytes";
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace l2rec
