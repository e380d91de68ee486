// C interface of the CUDA statistics kernel: raw pointers, sizes, strides, a dtype code and a stream.
// No torch headers: aselect_stats.cu compiles with nvcc alone.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//! Columns of the basis operands for sequences of `length` tokens: the tokens padded to whole tiles of 32.
int64_t aselect_stats_basis_cols(int64_t length);

//! Float counts of the two fp32 work buffers a launch needs: partial sums and entropy states.
void aselect_stats_workspace(int64_t n, int64_t length, int64_t channels, int64_t* part_floats,
                             int64_t* ent_floats);

//! Statistics [n, 6] (fp32, written with strides out_stride_n / out_stride_s) of x [n, length, channels].
//!   x:        dtype 0 fp32, 1 fp16, 2 bf16; strides in elements, any values (views are read in place)
//!   basis_hi, basis_lo: low-frequency basis [kp, aselect_stats_basis_cols(length)] row-major, zeros past
//!             length, kp a multiple of 16 (0: no low band); fp16/bf16: the input dtype, basis = hi + lo; fp32
//!             inputs: the TF32 halves hi = tf32(B), lo = tf32(B - hi) of the fp32 basis, as fp32
//!   rowsum:   [kp] fp32, row sums of the rounded basis (hi + lo)
//!   part, ent: fp32 work buffers of aselect_stats_workspace's sizes (fully overwritten)
//! Returns a cudaError_t (cudaSuccess = 0); cudaErrorInvalidValue for bad sizes.
int aselect_stats_launch(const void* x, int dtype, int64_t n, int64_t length, int64_t channels,
                         int64_t stride_n, int64_t stride_l, int64_t stride_c, const void* basis_hi,
                         const void* basis_lo, const float* rowsum, int kp, float* part, float* ent, float* out,
                         int64_t out_stride_n, int64_t out_stride_s, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
