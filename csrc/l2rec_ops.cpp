// The `l2rec` custom ops of the compiled extension: schemas, input checks, output
// allocation and the launch on the current stream. The kernels live in the .cu files
// behind l2rec_kernels.h; this file includes no CUDA header (see that header for why).
//
//   l2rec_cuda::route(Tensor logits, int top_k, float temperature) -> Tensor
//   l2rec_cuda::batch_metadata(Tensor attention_mask, int num_views) -> (Tensor x 5)
//
// Their fake (meta) implementations, for torch.compile, are Python functions in
// l2rec_kernels/ops/_cuda_ext.py, which the set_python_module call below points at.
#include <Python.h>  // first, as the Python C API asks

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "l2rec_kernels.h"

namespace l2rec {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// The current CUDA stream of `device` as a cudaStream_t, through the device-generic
// guard interface (implemented by libc10_cuda) instead of c10/cuda/CUDAStream.h, so that
// this file compiles against torch's CPU wheel too.
void* current_stream(const c10::Device& device) {
  const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(device.type());
  return impl->getStreamNativeHandle(impl->getStream(device));
}

// Dtypes as Python spells them (torch.float32, not c10's "Float"), for the messages.
const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    case at::kBool: return "bool";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    default: return c10::toString(t);
  }
}

// Checked after the argument checks, so that the argument errors are the same on any
// device (the ops are registered for CPU too, only to fail with this message).
void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device(),
              " (use backend='torch' for tensors on this device)");
}

// ---- route ---------------------------------------------------------------------------

at::Tensor route(const at::Tensor& logits, int64_t top_k, double temperature) {
  constexpr const char* op = "l2rec_cuda::route";
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D [S, E], got ", logits.dim(),
              "-D with shape ", logits.sizes());
  const auto dtype = logits.scalar_type();
  FloatKind kind = FloatKind::kFloat32;
  if (dtype == at::kHalf) {
    kind = FloatKind::kFloat16;
  } else if (dtype == at::kBFloat16) {
    kind = FloatKind::kBFloat16;
  } else {
    TORCH_CHECK(dtype == at::kFloat, op,
                ": logits must have dtype float32, float16 or bfloat16, got ", dtype_name(dtype));
  }
  const int64_t rows = logits.size(0);
  const int64_t experts = logits.size(1);
  TORCH_CHECK(experts >= 1 && experts <= kInt32Max, op,
              ": logits must have E in [1, 2147483647] expert columns, got E = ", experts,
              " (shape ", logits.sizes(), ")");
  TORCH_CHECK(top_k <= experts, op, ": top_k must be <= E = ", experts,
              " (or <= 0 for dense gates), got ", top_k);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0, op,
              ": temperature must be a positive finite number, got ", temperature);
  check_cuda(op, "logits", logits);

  const at::Tensor x = logits.contiguous();
  at::Tensor gates = at::empty({rows, experts}, x.options());
  if (rows == 0) return gates;
  const c10::DeviceGuard guard(x.device());
  const char* err = launch_route(x.const_data_ptr(), gates.mutable_data_ptr(), rows,
                                       experts, top_k, static_cast<float>(temperature), kind,
                                       current_stream(x.device()));
  TORCH_CHECK(err == nullptr, op, ": kernel launch failed: ", err);
  return gates;
}

// ---- batch_metadata ------------------------------------------------------------------

using Metadata = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Metadata batch_metadata(const at::Tensor& attention_mask, int64_t num_views) {
  constexpr const char* op = "l2rec_cuda::batch_metadata";
  TORCH_CHECK(attention_mask.dim() == 2, op, ": attention_mask must be 2-D [B, T], got ",
              attention_mask.dim(), "-D with shape ", attention_mask.sizes());
  const auto dtype = attention_mask.scalar_type();
  TORCH_CHECK(dtype == at::kBool || dtype == at::kByte || dtype == at::kChar ||
                  dtype == at::kShort || dtype == at::kInt || dtype == at::kLong,
              op, ": attention_mask must have dtype bool or an integer dtype (uint8, int8, "
              "int16, int32, int64), got ", dtype_name(dtype));
  TORCH_CHECK(num_views >= 1, op, ": num_views must be >= 1, got ", num_views);
  const int64_t users = attention_mask.size(0);
  const int64_t tokens = attention_mask.size(1);
  TORCH_CHECK(users <= kMetadataMaxUsers, op, ": attention_mask must have B <= ",
              kMetadataMaxUsers, " rows (users) for the CUDA kernel, got B = ", users,
              " (use backend='torch' for larger batches)");
  // views * users * max(tokens, 1) <= INT32_MAX, written so that nothing can overflow.
  const int64_t per_view = users * (tokens > 0 ? tokens : 1);  // <= numel or users
  TORCH_CHECK(per_view == 0 || num_views <= kInt32Max / per_view, op,
              ": num_views * B * T must be <= 2147483647 (cu_seqlens is int32), "
              "got num_views = ", num_views, ", B = ", users, ", T = ", tokens);
  check_cuda(op, "attention_mask", attention_mask);

  const at::Tensor mask = attention_mask.contiguous();
  const auto i64 = mask.options().dtype(at::kLong);
  const auto i32 = mask.options().dtype(at::kInt);
  const int64_t seqs = num_views * users;
  at::Tensor position_ids = at::empty({users, tokens}, i64);
  at::Tensor last_index = at::empty({users}, i64);
  at::Tensor cu_seqlens = at::empty({seqs + 1}, i32);
  at::Tensor seq_view = at::empty({seqs}, i32);
  at::Tensor packed_last_row = at::empty({seqs}, i64);

  MetadataOutputs out{};
  out.position_ids = position_ids.mutable_data_ptr<int64_t>();
  out.last_index = last_index.mutable_data_ptr<int64_t>();
  out.cu_seqlens = cu_seqlens.mutable_data_ptr<int32_t>();
  out.seq_view = seq_view.mutable_data_ptr<int32_t>();
  out.packed_last_row = packed_last_row.mutable_data_ptr<int64_t>();

  // Launched even for B == 0: cu_seqlens = [0] is still to be written.
  const c10::DeviceGuard guard(mask.device());
  const char* err = launch_batch_metadata(
      mask.const_data_ptr(), static_cast<int>(mask.element_size()), users, tokens, num_views,
      out, current_stream(mask.device()));
  TORCH_CHECK(err == nullptr, op, ": kernel launch failed: ", err);
  return {position_ids, last_index, cu_seqlens, seq_view, packed_last_row};
}

}  // namespace
}  // namespace l2rec

// A namespace of its own: the ops keep the names of the Python ops they serve (route,
// batch_metadata) without meeting the Triton ops that Python defines in `l2rec`
// (l2rec::route, l2rec::dpmoe_linear, l2rec::topk_items).
TORCH_LIBRARY(l2rec_cuda, m) {
  // Where the Python fake impls of the ops below live; torch requires this for C++ ops
  // with a Python register_fake.
  m.set_python_module("l2rec_kernels.ops._cuda_ext");
  m.def("route(Tensor logits, int top_k, float temperature) -> Tensor");
  m.def(
      "batch_metadata(Tensor attention_mask, int num_views) -> (Tensor position_ids, "
      "Tensor last_index, Tensor cu_seqlens, Tensor seq_view, Tensor packed_last_row)");
}

TORCH_LIBRARY_IMPL(l2rec_cuda, CUDA, m) {
  m.impl("route", &l2rec::route);
  m.impl("batch_metadata", &l2rec::batch_metadata);
}

// CPU tensors reach the same functions only to get the argument checks and then a clear
// "must be a CUDA tensor" error, instead of the dispatcher's "could not run" message.
TORCH_LIBRARY_IMPL(l2rec_cuda, CPU, m) {
  m.impl("route", &l2rec::route);
  m.impl("batch_metadata", &l2rec::batch_metadata);
}

// `import l2rec_kernels._C` loads this library, which runs the registrations above; the
// module itself is empty (the ops are reached as torch.ops.l2rec_cuda.*). The init function's
// name must match the module name `_C` that setup.py builds.
static PyModuleDef l2rec_module = {
    PyModuleDef_HEAD_INIT,
    "_C",                                                     // m_name
    "Compiled CUDA ops of l2rec-kernels (torch.ops.l2rec_cuda.*)",  // m_doc
    -1,                                                       // m_size
    nullptr,                                                  // m_methods
    nullptr,                                                  // m_slots
    nullptr,                                                  // m_traverse
    nullptr,                                                  // m_clear
    nullptr,                                                  // m_free
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&l2rec_module); }
