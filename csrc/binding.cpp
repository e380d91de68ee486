// Thin torch binding of the CUDA statistics kernel: the op aselect_cuda::sample_stats (CUDA tensors only).
// The Python side (aselect_kernels/ops/cuda_stats.py) prepares the basis and calls torch.ops.aselect_cuda.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "aselect_stats.h"

namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: return -1;
  }
}

at::Tensor sample_stats_cuda(const at::Tensor& x, const at::Tensor& basis_hi, const at::Tensor& basis_lo,
                             const at::Tensor& rowsum) {
  TORCH_CHECK(x.is_cuda(), "aselect_cuda::sample_stats: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 3, "aselect_cuda::sample_stats: x must have rank 3 [N, L, C], got ", x.sizes());
  const int code = dtype_code(x.scalar_type());
  TORCH_CHECK(code >= 0, "aselect_cuda::sample_stats reads fp32, fp16 or bf16, got ", x.scalar_type());
  const int64_t n = x.size(0), length = x.size(1), channels = x.size(2);
  TORCH_CHECK(n >= 1 && channels >= 1 && length >= 2, "aselect_cuda::sample_stats: bad shape ", x.sizes());
  const int64_t kp = basis_hi.size(0);
  const at::ScalarType basis_type = code == 0 ? at::kFloat : x.scalar_type();
  for (const at::Tensor* b : {&basis_hi, &basis_lo}) {
    TORCH_CHECK(b->device() == x.device() && b->scalar_type() == basis_type && b->is_contiguous() &&
                    b->dim() == 2 && b->size(0) == kp && b->size(1) == aselect_stats_basis_cols(length),
                "aselect_cuda::sample_stats: basis must be contiguous [K, L padded to whole tiles] ", basis_type,
                " on x's device");
  }
  TORCH_CHECK(kp % 16 == 0, "aselect_cuda::sample_stats: basis rows must be padded to a multiple of 16");
  TORCH_CHECK(rowsum.device() == x.device() && rowsum.scalar_type() == at::kFloat && rowsum.is_contiguous() &&
                  rowsum.numel() == kp,
              "aselect_cuda::sample_stats: rowsum must be contiguous fp32 [K] on x's device");
  const c10::cuda::CUDAGuard guard(x.device());
  int64_t part_floats = 0, ent_floats = 0;
  aselect_stats_workspace(n, length, channels, &part_floats, &ent_floats);
  const auto opts = x.options().dtype(at::kFloat);
  at::Tensor part = at::empty({part_floats}, opts);
  at::Tensor ent = at::empty({ent_floats}, opts);
  at::Tensor out = at::empty({n, 6}, opts);
  const int err = aselect_stats_launch(x.data_ptr(), code, n, length, channels, x.stride(0), x.stride(1),
                                       x.stride(2), basis_hi.data_ptr(), basis_lo.data_ptr(),
                                       rowsum.data_ptr<float>(), static_cast<int>(kp), part.data_ptr<float>(),
                                       ent.data_ptr<float>(), out.data_ptr<float>(), out.stride(0), out.stride(1),
                                       c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "aselect_cuda::sample_stats launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
  return out;
}

}  // namespace

TORCH_LIBRARY(aselect_cuda, m) {
  m.def("sample_stats(Tensor x, Tensor basis_hi, Tensor basis_lo, Tensor rowsum) -> Tensor");
}

TORCH_LIBRARY_IMPL(aselect_cuda, CUDA, m) { m.impl("sample_stats", &sample_stats_cuda); }

// Importing the module registers the op above; the module itself exposes nothing else.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "CUDA C++ statistics kernel (torch.ops.aselect_cuda)"; }
