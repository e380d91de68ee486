// Per-element and per-tile arithmetic of the CUDA statistics kernel, shared by the device code
// (aselect_stats.cu) and its serial host emulation (host_harness.cpp).
//
// Plain C++: compiles with nvcc (functions become __host__ __device__) and with a host compiler alone.
// The definition of record of every statistic is aselect_kernels/reference.py; the algorithm is the one
// of aselect_kernels/ops/fused_stats.py (shifted moments, online log-sum-exp entropy states, the
// low-frequency projection with the mean-leak correction, E_high clamped at 0, NaN on 0 / 0).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define ASK_HD __host__ __device__ __forceinline__
#else
#define ASK_HD inline
#endif

namespace aselect {

// ---- block geometry -------------------------------------------------------------------------------------
constexpr int kThreads = 256;        // threads per block
constexpr int kWarps = kThreads / 32;
constexpr int kBlockC = 128;         // channels per work item (one sample x one channel block)
constexpr int kTileL = 32;           // tokens per tile
constexpr int kFrag = 16;            // wmma fragment edge (16 x 16 accumulators)
constexpr int kColFrags = kBlockC / kFrag;
constexpr int kMaxFragsPerWarp = 3;  // accumulator fragments a warp keeps in registers
//! basis rows one pass over the tokens projects on (more rows: further passes re-read the sample)
constexpr int kPassRows = kMaxFragsPerWarp * kWarps / kColFrags * kFrag;
constexpr int kPartials = 4;         // sum x, sum M2, sum L mu^2, E_low
constexpr int kResidentBasisBytes = 64 * 1024;  // a basis up to this size stays in shared memory

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

ASK_HD int elem_bytes(int dtype) { return dtype == kFloat32 ? 4 : 2; }

//! How a tile [kTileL, kBlockC] is spread over the threads: each thread reads kVec consecutive channels
//! (16 bytes) of kSteps rows; the kGroups threads of a row are consecutive lanes of one warp.
template <int ElemBytes>
struct TileMap {
  static constexpr int kVec = 16 / ElemBytes;
  static constexpr int kGroups = kBlockC / kVec;
  static constexpr int kRowsPerStep = kThreads / kGroups;
  static constexpr int kSteps = kTileL / kRowsPerStep;
  static_assert(kGroups <= 32 && 32 % kGroups == 0, "a tile row must lie within one warp");
  static_assert(kSteps * kRowsPerStep == kTileL, "threads must cover the tile");
  ASK_HD static int group(int tid) { return tid % kGroups; }
  ASK_HD static int row(int tid, int step) { return tid / kGroups + step * kRowsPerStep; }
};

// ---- launch plan (host side, also used by the emulation) ------------------------------------------------
struct Plan {
  int num_cb;       // channel blocks per sample
  int num_tiles;    // token tiles per sample
  int kp;           // basis rows, padded to a multiple of kFrag (0: no low frequencies)
  int pass_rows;    // basis rows per pass
  int num_pass;     // passes over the tokens (>= 1)
  int resident;     // 1: the whole basis sits in shared memory for the block's lifetime
  int basis_ld;     // leading dimension (elements) of the basis in shared memory
  int basis_cols;   // columns of the basis in shared memory (all padded tokens, or one tile)
  int vec;          // 1: 16-byte loads; 0: scalar loads with arbitrary strides
  int smem_bytes;   // dynamic shared memory of a block (smem_layout below)
};

ASK_HD int cdiv(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

//! Shared-memory padding (elements) that keeps 16-byte rows and staggers the banks.
ASK_HD int smem_pad(int dtype) { return dtype == kFloat32 ? 4 : 8; }

//! Whether the 16-byte vector path is safe: unit channel stride, every row start 16-byte aligned.
ASK_HD int vector_ok(uintptr_t addr, int dtype, int64_t channels, int64_t stride_n, int64_t stride_l,
                     int64_t stride_c) {
  const int64_t vec = 16 / elem_bytes(dtype);
  return stride_c == 1 && addr % 16 == 0 && channels % vec == 0 && stride_l % vec == 0 && stride_n % vec == 0;
}

// ---- shared memory of a block: [shift | centre | warp slots] [moment partials / fragment scratch]
//      [kStages tiles (cp.async ring)] [basis hi (| basis lo)] -------------------------------------------------
ASK_HD constexpr int align128(int bytes) { return (bytes + 127) / 128 * 128; }
constexpr int kHeadBytes = align128((2 * kBlockC + kWarps * 4) * 4);
constexpr int kRedBytes = align128(2 * kWarps * kBlockC * 4);
static_assert(kWarps * kFrag * kFrag * 4 <= kRedBytes, "the fragment scratch shares the moment partials' space");
ASK_HD constexpr int ring_stages(int elem) { return elem == 4 ? 3 : 4; }  // tiles in flight per block
ASK_HD constexpr int tile_ld(int elem) { return kBlockC + (elem == 4 ? 4 : 8); }  // tile leading dim (elements)
ASK_HD constexpr int tile_bytes(int elem) { return align128(kTileL * tile_ld(elem) * elem); }
ASK_HD int basis_rows(const Plan& p) { return p.kp == 0 ? 0 : (p.resident ? p.kp : p.pass_rows); }
ASK_HD int smem_layout(const Plan& p, int dtype) {
  const int elem = elem_bytes(dtype), splits = dtype == kFloat32 ? 1 : 2;
  return kHeadBytes + kRedBytes + ring_stages(elem) * tile_bytes(elem) + basis_rows(p) * p.basis_ld * elem * splits;
}

ASK_HD Plan make_plan(int64_t length, int64_t channels, int kp, int dtype, int vec) {
  Plan p;
  p.num_cb = cdiv(channels, kBlockC);
  p.num_tiles = cdiv(length, kTileL);
  p.kp = kp;
  p.pass_rows = kp < kPassRows ? kp : kPassRows;
  p.num_pass = kp == 0 ? 1 : cdiv(kp, kPassRows);
  const int splits = dtype == kFloat32 ? 1 : 2;
  const int64_t lpad = static_cast<int64_t>(p.num_tiles) * kTileL;
  const int64_t resident_bytes = static_cast<int64_t>(kp) * (lpad + smem_pad(dtype)) * elem_bytes(dtype) * splits;
  p.resident = resident_bytes <= kResidentBasisBytes ? 1 : 0;
  p.basis_cols = p.resident ? static_cast<int>(lpad) : kTileL;
  p.basis_ld = p.basis_cols + smem_pad(dtype);
  p.vec = vec;
  p.smem_bytes = smem_layout(p, dtype);
  return p;
}

// ---- step 1: moments with a shift ------------------------------------------------------------------------
//! Per channel, from a = sum (x - k) and b = sum (x - k)^2 over L tokens.
struct ChannelMoments {
  float mu_off;  // mu - k
  float m2;      // sum (x - mu)^2
  float mu;
};

ASK_HD ChannelMoments channel_moments(float shift, float a, float b, float length) {
  ChannelMoments m;
  m.mu_off = a / length;
  m.m2 = b - a * m.mu_off;
  m.mu = shift + m.mu_off;
  return m;
}

// ---- step 2: entropy states ------------------------------------------------------------------------------
//! Online log-sum-exp state of a set of logits: m = max, s = sum e^{x-m}, t = sum e^{x-m} (x-m).
//! The empty state has s = 0.  H = log s - t / s.
struct EntState {
  float m, s, t;
};

ASK_HD EntState ent_merge(EntState a, EntState b) {
  if (a.s == 0.0f) return b;
  if (b.s == 0.0f) return a;
  const float mm = fmaxf(a.m, b.m);
  const float da = a.m - mm, db = b.m - mm;
  const float alpha = expf(da), beta = expf(db);
  EntState r;
  r.m = mm;
  r.t = alpha * (a.t + da * a.s) + beta * (b.t + db * b.s);
  r.s = alpha * a.s + beta * b.s;
  return r;
}

ASK_HD float ent_value(EntState st) { return logf(st.s) - st.t / st.s; }

// ---- step 4: the six statistics from a sample's summed partials -----------------------------------------
//! part: sum x, sum M2, sum L mu^2, E_low (each summed over the channel blocks in order); h_sum: sum over
//! tokens of the row entropies.  out: mean, mean_sq, token_var, chan_entropy, hfr, hfr_centered.
ASK_HD void finalize_stats(const float part[kPartials], float h_sum, int64_t length, int64_t channels,
                           float out[6]) {
  const float lf = static_cast<float>(length);
  const float lc = lf * static_cast<float>(channels);
  const float sum_x = part[0], sum_m2 = part[1], sum_lmu2 = part[2], e_low = part[3];
  const float e_centred = lf * sum_m2;
  const float e_total = lf * (sum_m2 + sum_lmu2);
  const float e_high = fmaxf(e_centred - e_low, 0.0f);
  out[0] = sum_x / lc;
  out[1] = (sum_m2 + sum_lmu2) / lc;
  out[2] = sum_m2 / ((lf - 1.0f) * static_cast<float>(channels));
  out[3] = h_sum / lf;
  out[4] = e_total > 0.0f ? e_high / e_total : NAN;
  out[5] = e_centred > 0.0f ? e_high / e_centred : NAN;
}

}  // namespace aselect
