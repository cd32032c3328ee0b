// The boundary between the op layer (l2rec_ops.cpp: at::Tensor, checks, registration)
// and the kernels (*.cu: raw pointers, CUDA runtime only).
//
// Why this split: the .cu files then include no torch header at all, so nvcc compiles
// only our kernels (fast, and warnings-as-errors sees only our code), and the .cpp needs
// no CUDA header, so both halves compile against the CPU-only torch wheel's headers
// (which lack c10/cuda/impl/cuda_cmake_macros.h and the cuBLAS/cuSPARSE headers that
// ATen/cuda/CUDAContext.h pulls in). Streams cross this boundary as `void*`
// (a cudaStream_t).
#pragma once

#include <cstdint>

namespace l2rec {

// ---- route ---------------------------------------------------------------------------

enum class FloatKind : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// gates[s, :] = softmax(logits[s, :] / temperature), optionally restricted to the top_k
// largest logits (ties: lowest index) and renormalised; top_k <= 0 or >= experts = dense.
// Both tensors are row-major [rows, experts] of `kind`. Returns nullptr on success, else
// the CUDA error string of the launch.
const char* launch_route(const void* logits, void* gates, int64_t rows, int64_t experts,
                               int64_t top_k, float temperature, FloatKind kind, void* stream);

// ---- batch_metadata ------------------------------------------------------------------

// Users (mask rows) one launch supports: every block keeps all users' token counts and
// their prefix sum in shared memory (4 bytes each, 32 KiB at the limit).
constexpr int64_t kMetadataMaxUsers = 8192;

struct MetadataOutputs {
  int64_t* position_ids;     // [B, T]
  int64_t* last_index;       // [B]
  int32_t* cu_seqlens;       // [V*B + 1]
  int32_t* seq_view;         // [V*B]
  int64_t* packed_last_row;  // [V*B]
};

// One launch: every output above from the row-major mask [users, tokens] whose elements
// are `mask_elem_bytes` wide (1, 2, 4 or 8) and count as attended when nonzero.
// Preconditions (checked by the caller): users <= kMetadataMaxUsers and
// views * users * max(tokens, 1) <= INT32_MAX. Returns nullptr or the CUDA error string.
const char* launch_batch_metadata(const void* mask, int mask_elem_bytes, int64_t users,
                                  int64_t tokens, int64_t views, const MetadataOutputs& out,
                                  void* stream);

}  // namespace l2rec
