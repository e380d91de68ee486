// Per-element and per-tile arithmetic of the CUDA statistics kernel, shared by the device code
// (aselect_stats.cu) and its serial host emulation (emulate_stats.cpp).
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
#define ASK_UNROLL _Pragma("unroll")
#else
#define ASK_HD inline
#define ASK_UNROLL
#endif

namespace aselect {

// ---- block geometry -------------------------------------------------------------------------------------
constexpr int kThreads = 256;        // threads per block
constexpr int kWarps = kThreads / 32;
constexpr int kBlockC = 128;         // channels per work item (one sample x one channel block)
constexpr int kTileL = 32;           // tokens per tile
constexpr int kFrag = 16;            // rows (and channels) of a tensor-core fragment
constexpr int kColFrags = kBlockC / kFrag;
static_assert(kColFrags == kWarps, "each warp owns one 16-channel column of the projection");
//! Row fragments a warp keeps in registers (warp w: channels 16 w .. 16 w + 15), per element size: 3 for 16-bit
//! inputs, 2 for fp32 (3xTF32's split operands take the registers of the third).
ASK_HD constexpr int max_frags(int elem) { return elem == 4 ? 2 : 3; }
//! basis rows one pass over the tokens projects on (more rows: further passes re-read the sample)
ASK_HD constexpr int pass_rows(int elem) { return max_frags(elem) * kFrag; }
constexpr int kPartials = 4;         // sum x, sum M2, sum L mu^2, E_low
constexpr int kResidentBasisBytes = 68 * 1024;  // a basis up to this size stays in shared memory
//! The value a channel past C takes in a tile (bf16/fp32 fill words decode to it; fp16's -inf is clamped to it):
//! below every input that does not overflow the squares, so it never wins a row maximum, and its exponential
//! flushes to 0 with a finite exponent, so it adds exactly 0 to both entropy sums.
constexpr float kNegFill = -0x1p100f;

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

ASK_HD int elem_bytes(int dtype) { return dtype == kFloat32 ? 4 : 2; }

//! How a tile [kTileL, kBlockC] is spread over the threads: one row per thread, kPer channels of it in kPieces
//! 16-byte pieces of kVec consecutive channels, kPieceStride channels apart (so that the kGroups consecutive lanes
//! of a row read 128 consecutive bytes per piece).
template <int ElemBytes>
struct TileMap {
  static constexpr int kVec = 16 / ElemBytes;
  static constexpr int kPer = 16;
  static constexpr int kPieces = kPer / kVec;
  static constexpr int kGroups = kBlockC / kPer;
  static constexpr int kPieceStride = kBlockC / kPieces;
  static_assert(kThreads / kGroups == kTileL, "one tile row per thread");
  static_assert(kGroups <= 32 && 32 % kGroups == 0, "a tile row must lie within one warp");
  ASK_HD static int group(int tid) { return tid % kGroups; }
  ASK_HD static int row(int tid) { return tid / kGroups; }
  //! The channel (within the block) of a thread's v-th value.
  ASK_HD static int chan(int g, int v) { return (v / kVec) * kPieceStride + g * kVec + v % kVec; }
};

// ---- launch plan (host side, also used by the emulation) ------------------------------------------------
struct Plan {
  int num_cb;       // channel blocks per sample
  int num_tiles;    // token tiles per sample
  int kp;           // basis rows, padded to a multiple of kFrag (0: no low frequencies)
  int frags;        // row fragments per warp and pass (0 .. max_frags)
  int pass_rows;    // basis rows per pass (frags * kFrag; the last pass reads zeros past kp)
  int num_pass;     // passes over the tokens (>= 1)
  int resident;     // 1: every basis slice sits in shared memory for the block's lifetime
  int stages;       // tiles in the cp.async ring
  int stage_bytes;  // bytes of one ring stage: the X tile (and, not resident, its basis slice)
  int vec;          // 1: 16-byte copies; 0: scalar loads with arbitrary strides
  int smem_bytes;   // dynamic shared memory of a block (smem_layout below)
};

ASK_HD int cdiv(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

//! Basis columns the kernel reads: the tokens padded to whole tiles (zeros past L).
ASK_HD int64_t basis_cols(int64_t length) { return static_cast<int64_t>(cdiv(length, kTileL)) * kTileL; }

//! Whether the 16-byte vector path is safe: unit channel stride, every row start 16-byte aligned.
ASK_HD int vector_ok(uintptr_t addr, int dtype, int64_t channels, int64_t stride_n, int64_t stride_l,
                     int64_t stride_c) {
  const int64_t vec = 16 / elem_bytes(dtype);
  return stride_c == 1 && addr % 16 == 0 && channels % vec == 0 && stride_l % vec == 0 && stride_n % vec == 0;
}

// ---- shared memory of a block: [shift | centre | warp slots | fill] [moment partials] [ring: stages x (X tile
//      (| basis slice))] [resident basis: num_pass x num_tiles slices] ---------------------------------------
// A basis slice is the [pass_rows, kTileL] block of one pass and tile: hi rows, then lo rows.  Rows of tiles and
// slices are padded by 16 bytes, which keeps them 16-byte aligned and makes the 8 rows an ldmatrix reads hit 8
// different 16-byte bank groups.
ASK_HD constexpr int align128(int bytes) { return (bytes + 127) / 128 * 128; }
constexpr int kHeadBytes = align128((2 * kBlockC + kWarps * 4 + 4) * 4);  // fill: 16 bytes of kNegFill
constexpr int kRedBytes = align128(2 * kWarps * kBlockC * 4);
ASK_HD constexpr int ring_stages(int elem) { return elem == 4 ? 2 : 4; }  // tiles in flight per block: stages - 1
ASK_HD constexpr int tile_ld(int elem) { return kBlockC + 16 / elem; }    // X tile leading dim (elements)
ASK_HD constexpr int tile_bytes(int elem) { return align128(kTileL * tile_ld(elem) * elem); }
ASK_HD constexpr int slice_ld(int elem) { return kTileL + 16 / elem; }    // basis slice leading dim (elements)
ASK_HD constexpr int slice_bytes(int frags, int elem) { return 2 * frags * kFrag * slice_ld(elem) * elem; }
//! The slice area of a ring stage (basis not resident): the slice, and room for the zero-filled chunks of the
//! threads whose last chunk lies past it (every thread copies the same number of 16-byte chunks per tile).
ASK_HD constexpr int slice_area_bytes(int frags, int elem) {
  return align128((2 * frags * kFrag * (kTileL * elem / 16) + kThreads - 1) / kThreads * kThreads /
                  (kTileL * elem / 16) * slice_ld(elem) * elem);
}
ASK_HD constexpr int stage_bytes(int frags, int resident, int elem) {
  return tile_bytes(elem) + (resident ? 0 : slice_area_bytes(frags, elem));
}
ASK_HD int64_t resident_bytes(const Plan& p, int dtype) {
  return static_cast<int64_t>(p.num_pass) * p.num_tiles * slice_bytes(p.frags, elem_bytes(dtype));
}
ASK_HD int smem_layout(const Plan& p, int dtype) {
  return kHeadBytes + kRedBytes + p.stages * p.stage_bytes +
         (p.kp > 0 && p.resident ? static_cast<int>(resident_bytes(p, dtype)) : 0);
}

ASK_HD Plan make_plan(int64_t length, int64_t channels, int kp, int dtype, int vec) {
  const int elem = elem_bytes(dtype);
  Plan p;
  p.num_cb = cdiv(channels, kBlockC);
  p.num_tiles = cdiv(length, kTileL);
  p.kp = kp;
  const int most = pass_rows(elem);
  p.frags = (kp < most ? kp : most) / kFrag;
  p.pass_rows = p.frags * kFrag;
  p.num_pass = kp == 0 ? 1 : cdiv(kp, most);
  p.resident = kp == 0 || resident_bytes(p, dtype) <= kResidentBasisBytes ? 1 : 0;
  p.stages = ring_stages(elem);
  p.stage_bytes = stage_bytes(p.frags, p.resident, elem);
  p.vec = vec;
  p.smem_bytes = smem_layout(p, dtype);
  return p;
}

// ---- per-element arithmetic (pass 0) ---------------------------------------------------------------------
constexpr float kLog2e = 1.44269504088896340736f;

//! 2^y with denormal inputs and results flushed to zero: the device's ex2.approx.ftz.f32 (one MUFU.EX2); on the
//! host exp2f with the same flushes (exact where the device's is within 2 ulp).
ASK_HD float exp2_ftz(float y) {
#if defined(__CUDA_ARCH__)
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(y));
  return e;
#else
  const float e = exp2f(fabsf(y) < 0x1p-126f ? 0.0f : y);
  return e < 0x1p-126f ? 0.0f : e;
#endif
}

//! Entropy sums of n values of one row against the reference m = (row maximum) log2 e: s += e, t += e y, with
//! y = v log2 e - m (one rounding) and e = 2^y, flushed to 0 under 2^-126 (against the row's largest term, about 1).
//! first: s and t start from the first value's terms (no addition to 0).
ASK_HD void entropy_sums(const float* v, int n, float m, float& s, float& t, bool first) {
  ASK_UNROLL
  for (int i = 0; i < n; ++i) {
    const float y = fmaf(v[i], kLog2e, -m);
    const float e = exp2_ftz(y);
    if (first && i == 0) {
      s = e;
      t = e * y;
    } else {
      s += e;
      t = fmaf(e, y, t);
    }
  }
}

//! Shifted moment sums of n values: a += d, b += d^2, d = v - k (per channel).
ASK_HD void moment_sums(const float* v, const float* k, int n, float* a, float* b) {
  ASK_UNROLL
  for (int i = 0; i < n; ++i) {
    const float d = v[i] - k[i];
    a[i] += d;
    b[i] = fmaf(d, d, b[i]);
  }
}

//! cvt.rna.tf32.f32 of a finite value's bits: round to 10 explicit mantissa bits, ties away from zero.
ASK_HD uint32_t tf32_rna_bits(uint32_t bits) { return (bits + 0x1000u) & 0xffffe000u; }

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

// ---- step 2: entropy states, in base 2 -------------------------------------------------------------------
//! Online log-sum-exp state of a set of logits x in base-2 units y = x log2 e: a reference point m (about the
//! largest y), s = sum 2^(y - m), t = sum 2^(y - m) (y - m).  The empty state has s = 0.  The entropy of
//! softmax(x) is H = ln 2 (log2 s - t / s).
struct EntState {
  float m, s, t;
};

constexpr float kLn2 = 0.693147180559945309417f;

ASK_HD EntState ent_merge(EntState a, EntState b) {
  if (a.s == 0.0f) return b;
  if (b.s == 0.0f) return a;
  const float mm = fmaxf(a.m, b.m);
  const float da = a.m - mm, db = b.m - mm;
  const float alpha = exp2f(da), beta = exp2f(db);
  EntState r;
  r.m = mm;
  r.t = alpha * (a.t + da * a.s) + beta * (b.t + db * b.s);
  r.s = alpha * a.s + beta * b.s;
  return r;
}

ASK_HD float ent_value(EntState st) { return kLn2 * (log2f(st.s) - st.t / st.s); }

//! The state a row's block stores as (row maximum, s, t): its reference is the maximum in base 2, rounded once,
//! exactly as entropy_sums was given it.
ASK_HD EntState ent_state(float row_max, float s, float t) { return EntState{row_max * kLog2e, s, t}; }

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
