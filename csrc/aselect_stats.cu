// The six per-sample statistics of a tapped tensor x [N, L, C] in CUDA C++ (no torch headers).
//
// The definition of record is aselect_kernels/reference.py; the algorithm is the Triton kernel's
// (aselect_kernels/ops/fused_stats.py), with the arithmetic shared with a host emulation in
// aselect_stats_math.h.  The plan:
//
// * Work items are (sample n, channel block of kBlockC = 128 channels).  A persistent grid (as many blocks as
//   fit on the device at once) walks them in order.  Tokens are never split across blocks: the low-frequency
//   projection must be squared after it is summed over all L tokens.
// * A block walks the L tokens in tiles [kTileL = 32, 128]: thread t owns row t / 8 of every tile and 16 of its
//   channels, in 16-byte pieces (TileMap).  With a unit channel stride and 16-byte aligned rows the pieces are
//   copied by cp.async into a ring of stages, stages - 1 tiles ahead of the tile being consumed and across work
//   items; with other strides, scalar loads fill the same ring.  The copies make every tile full, so the loop
//   has no bounds checks: a row past L holds the sample's first token (the shift, so d = x - k = 0 there, and its
//   entropy state is not stored), and a channel past C holds kNegFill (it never wins a row maximum and adds
//   exactly 0 to the entropy sums; its moments and projection are dropped when the block's sums are reduced).
// * Step 1, moments with a shift k_c = x[n, 0, c]: each thread sums d = x - k_c and d^2 for its 16 channels in
//   registers; at the end of the sample a warp-shuffle reduction, then the 8 warps' partials in a fixed order.
// * Step 2, entropy: the 8 threads of a tile row are consecutive lanes, so the row's max and its (s, t) sums over
//   the block's channels are warp-shuffle reductions; e = 2^((x - m) log2 e) is one MUFU.EX2 (flush to zero).
//   The state (m, s, t) of each row is written out and merged over the channel blocks, in order, by the combine
//   kernel.
// * Step 3, low-frequency energy: proj [K, 128] += B [K, tile] @ tile on tensor cores (mma.sync, fragments read
//   by ldmatrix), fp32 accumulators in registers: warp w owns channels [16 w, 16 w + 16) and every row fragment
//   of a pass.  fp16/bf16: the raw tile (exact) times B = B_hi + B_lo, both in the input dtype (two MMAs).  fp32:
//   the shifted tile d = x - k times the basis on TF32 tensor cores with both operands split into hi + lo TF32
//   halves (three MMAs, "3xTF32"; the basis arrives split).  The mean leak of the rounded basis is removed
//   exactly: E_low = sum (proj - rowsum(B) centre)^2 with centre = mu (raw operand) or mu - k (shifted operand).
//   The basis is read in [pass rows, kTileL] slices: all of them stay in shared memory for the block's life when
//   they fit (kResidentBasisBytes), else each tile's slice rides in the ring with its tile.  More than pass_rows
//   basis rows take further passes over the sample's tiles (re-read from L2).
// * Step 4: each work item writes 4 partial sums (sum x, sum M2, sum L mu^2, E_low) and its entropy states; the
//   combine kernel (one block per sample) adds them over the channel blocks in order.  No float atomics: the
//   result is bitwise deterministic and does not depend on the batch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "aselect_stats.h"
#include "aselect_stats_math.h"

namespace aselect {
namespace {

// ---- elements: the 32-bit words of a thread's pieces, held in registers ------------------------------------
__device__ __forceinline__ unsigned word_of(const uint4& u, int i) {
  return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static constexpr unsigned kFillBits = 0xf1800000u;  // kNegFill
  static constexpr unsigned kFillWord = kFillBits;
  __device__ static float get(unsigned w, int) { return __uint_as_float(w); }
  __device__ static unsigned bits(float v) { return __float_as_uint(v); }
};

template <>
struct Elem<__half> {
  static constexpr unsigned kFillBits = 0xfc00u;  // -inf (fp16 has no kNegFill): get() clamps it
  static constexpr unsigned kFillWord = kFillBits * 0x10001u;
  __device__ static float get(unsigned w, int half) {
    const float v = __half2float(__ushort_as_half(static_cast<unsigned short>(half ? w >> 16 : w & 0xffffu)));
    return fmaxf(v, kNegFill);
  }
  __device__ static unsigned bits(__half v) { return __half_as_ushort(v); }
};

template <>
struct Elem<__nv_bfloat16> {
  static constexpr unsigned kFillBits = 0xf180u;  // kNegFill
  static constexpr unsigned kFillWord = kFillBits * 0x10001u;
  __device__ static float get(unsigned w, int half) { return __uint_as_float(half ? w & 0xffff0000u : w << 16); }
  __device__ static unsigned bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
};

//! The values of one 16-byte piece.
template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float (&val)[16 / sizeof(T)]) {
  constexpr int kPerWord = 4 / sizeof(T);
#pragma unroll
  for (int v = 0; v < 16 / static_cast<int>(sizeof(T)); ++v) {
    val[v] = Elem<T>::get(word_of(raw, v / kPerWord), v % kPerWord);
  }
}

// ---- warp reductions over groups of consecutive lanes (xor butterflies: every lane gets the result) --------
template <int Width>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int o = 1; o < Width; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <int Width>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = Width / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

//! Sums of a and b over groups of Width consecutive lanes, in half the shuffles of two butterflies: the result is
//! a's sum on even lanes and b's on odd lanes (pairs first, then xor 2, 4, ...; the same bits on every lane).
template <int Width>
__device__ __forceinline__ float group_sum_pair(float a, float b) {
  const bool odd = threadIdx.x & 1;
  float v = (odd ? b : a) + __shfl_xor_sync(0xffffffffu, odd ? a : b, 1);
#pragma unroll
  for (int o = 2; o < Width; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

//! The maximum of a thread's values of one row, from its raw pieces (exact in any order): fp32 values, or packed
//! max over the 16-bit words, then the last pair.
template <typename T, int kPieces>
__device__ __forceinline__ float thread_max(const uint4 (&raw)[kPieces]) {
  unsigned w[4 * kPieces];
#pragma unroll
  for (int i = 0; i < 4 * kPieces; ++i) w[i] = word_of(raw[i / 4], i % 4);
  if constexpr (sizeof(T) == 4) {
    float m = __uint_as_float(w[0]);
#pragma unroll
    for (int i = 1; i < 4 * kPieces; ++i) m = fmaxf(m, __uint_as_float(w[i]));
    return m;
  } else {
#pragma unroll
    for (int n = 4 * kPieces; n > 1; n /= 2) {
#pragma unroll
      for (int i = 0; i < n / 2; ++i) {
        if constexpr (std::is_same_v<T, __half>) {
          asm("max.f16x2 %0, %1, %2;\n" : "=r"(w[i]) : "r"(w[i]), "r"(w[i + n / 2]));
        } else {
          asm("max.bf16x2 %0, %1, %2;\n" : "=r"(w[i]) : "r"(w[i]), "r"(w[i + n / 2]));
        }
      }
    }
    return fmaxf(Elem<T>::get(w[0], 0), Elem<T>::get(w[0], 1));
  }
}

// ---- shared memory by 32-bit address; asynchronous copies global -> shared (sm_80+) -------------------------
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ uint4 lds128(unsigned addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}
__device__ __forceinline__ float lds32(unsigned addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts128(unsigned addr, const uint4& v) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
//! One 16-byte piece of an X tile, zeros (and no read) when n = 0 (bench/sass_report.py counts the copies on the
//! line marked "reads X" as the loads of X).
__device__ __forceinline__ void copy_x16(unsigned dst, const void* src, int n) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n) : "memory");  // reads X
}
//! One 16-byte piece of the basis; zeros (and no read) when !valid.
__device__ __forceinline__ void copy_basis16(unsigned dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

// ---- tensor cores: mma.sync on fragments read by ldmatrix -----------------------------------------------------
__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned addr, unsigned (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

//! c [16 x 8] += a [16 x k] b [k x 8] for one fragment set (T: the operands' type; k = 16, or 8 for TF32).
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);

template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                                   unsigned b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma<__half>(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma<float>(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

//! This lane's ldmatrix address in an X tile (fp16/bf16, .trans: the B fragments of the warp's 16 channels) or
//! its ld.shared address (fp32: B fragment element (k = lane % 4, n = lane / 4) of the warp's first 8 channels).
template <typename T>
__device__ __forceinline__ unsigned x_frag_offset(int lane, int warp) {
  constexpr int kLd = tile_ld(sizeof(T));
  if constexpr (sizeof(T) == 4) return ((lane & 3) * kLd + warp * kFrag + (lane >> 2)) * 4;
  return (((lane & 7) + ((lane >> 3) & 1) * 8) * kLd + warp * kFrag + (lane >> 4) * 8) * 2;
}

//! This lane's ldmatrix address in a basis slice: row lane % 16, column 8 (16-bit) or 4 (fp32) x (lane / 16).
template <typename T>
__device__ __forceinline__ unsigned a_frag_offset(int lane) {
  return ((lane & 15) * slice_ld(sizeof(T)) + (lane >> 4) * (16 / static_cast<int>(sizeof(T)))) * sizeof(T);
}

//! acc[j] += slice rows [16 j, 16 j + 16) (hi and lo) x this warp's 16 channels of the tile, over kTileL tokens.
//! acc[j][h][i]: row 16 j + lane / 4 + 8 (i / 2), channel 16 warp + 8 h + 2 (lane % 4) + i % 2.
template <typename T, int kF>
__device__ __forceinline__ void tile_mma(float (&acc)[kF][2][4], unsigned x_addr, unsigned a_addr) {
  constexpr int kElem = sizeof(T), kLd = tile_ld(kElem), kSld = slice_ld(kElem);
  constexpr int kLoBytes = kF * kFrag * kSld * kElem;  // the lo rows follow the hi rows
  constexpr int kK = kElem == 4 ? 8 : 16;               // tokens per MMA
#pragma unroll
  for (int k = 0; k < kTileL; k += kK) {
    unsigned b[2][2];  // [8-channel half][register]
    unsigned b_lo[2][2];
    if constexpr (kElem == 4) {  // ld.shared of d, split into TF32 hi + lo (d is finite)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const float v = lds32(x_addr + ((k + 4 * q) * kLd + 8 * h) * 4);
          b[h][q] = tf32_rna_bits(__float_as_uint(v));
          b_lo[h][q] = tf32_rna_bits(__float_as_uint(v - __uint_as_float(b[h][q])));
        }
      }
    } else {
      unsigned t[4];
      ldsm_x4_trans(x_addr + k * kLd * 2, t);
      b[0][0] = t[0], b[0][1] = t[1], b[1][0] = t[2], b[1][1] = t[3];
    }
#pragma unroll
    for (int j = 0; j < kF; ++j) {
      unsigned a_hi[4], a_lo[4];
      ldsm_x4(a_addr + (j * kFrag * kSld + k) * kElem, a_hi);
      ldsm_x4(a_addr + kLoBytes + (j * kFrag * kSld + k) * kElem, a_lo);
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // the small terms first
        mma<T>(acc[j][h], a_lo, b[h][0], b[h][1]);
        if constexpr (kElem == 4) mma<T>(acc[j][h], a_hi, b_lo[h][0], b_lo[h][1]);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) mma<T>(acc[j][h], a_hi, b[h][0], b[h][1]);
    }
  }
}

//! E_low contribution of this warp's accumulators: sum (proj - rowsum * centre)^2 over the pass's rows below kp
//! and the channels below C (every lane gets the warp's sum).
template <int kF>
__device__ float low_energy(const float (&acc)[kF][2][4], int row0, int kp, const float* centre, const float* rowsum,
                            int channels_left) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float e = 0.0f;
#pragma unroll
  for (int j = 0; j < kF; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = row0 + j * kFrag + (lane >> 2) + 8 * (i >> 1);
      const float rs = row < kp ? rowsum[row] : 0.0f;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int ch = warp * kFrag + 8 * h + 2 * (lane & 3) + (i & 1);
        const float v = ch < channels_left ? acc[j][h][i] - rs * centre[ch] : 0.0f;
        e = fmaf(v, v, e);
      }
    }
  }
  return group_sum<32>(e);
}

struct Args {
  const void* x;
  const void* basis_hi;
  const void* basis_lo;
  const float* rowsum;
  float* part;
  float* ent;
  int64_t n, length, channels, stride_n, stride_l, stride_c;
  Plan plan;
};

template <typename T, bool kVecPath, int kF, bool kResident>
__global__ void __launch_bounds__(kThreads, 2) aselect_stats_main_kernel(Args a) {
  using Map = TileMap<sizeof(T)>;
  constexpr int kElem = sizeof(T);
  constexpr bool kF32 = kElem == 4;
  constexpr int kPer = Map::kPer, kPieces = Map::kPieces, kVec = Map::kVec, kPs = Map::kPieceStride;
  constexpr int kStages = ring_stages(kElem);
  constexpr int kLd = tile_ld(kElem);
  constexpr int kStage = stage_bytes(kF, kResident, kElem);
  constexpr int kSlice = slice_bytes(kF, kElem);
  constexpr int kSliceAt = tile_bytes(kElem);  // a stage's basis slice (not resident)
  constexpr int kSld = slice_ld(kElem);
  constexpr int kRows = kF * kFrag;                     // basis rows of a pass
  constexpr int kCpr = kTileL * kElem / 16;             // 16-byte chunks of a slice row
  constexpr int kChunks = kResident ? 0 : 2 * kRows * kCpr;
  constexpr int kChunksPerThread = (kChunks + kThreads - 1) / kThreads;
  const Plan& P = a.plan;
  extern __shared__ __align__(128) unsigned char smem[];
  float* s_shift = reinterpret_cast<float*>(smem);
  float* s_centre = s_shift + kBlockC;
  float* s_slot = s_centre + kBlockC;                           // [kWarps][4]
  float* s_fill = s_slot + kWarps * 4;                          // 16 bytes of fill words
  float* s_red = reinterpret_cast<float*>(smem + kHeadBytes);  // [2][kWarps][kBlockC] moment partials
  const unsigned ring = smem_addr(smem + kHeadBytes + kRedBytes);
  const unsigned basis_s = ring + kStages * kStage;  // resident slices: [pass][tile] x (hi rows, lo rows)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = Map::group(tid), r = Map::row(tid);
  const int L = static_cast<int>(a.length), C = static_cast<int>(a.channels);
  const int num_cb = P.num_cb, num_tiles = P.num_tiles, lpad = num_tiles * kTileL;
  const T* x = static_cast<const T*>(a.x);
  const T* b_hi = static_cast<const T*>(a.basis_hi);
  const T* b_lo = static_cast<const T*>(a.basis_lo);
  if (tid < 4) s_fill[tid] = __uint_as_float(Elem<T>::kFillWord);  // read after the first tile's barrier

  if constexpr (kF > 0 && kResident) {  // every slice of every pass, once for the block's life (rows >= kp: 0)
    constexpr int kPerSlice = 2 * kRows * kCpr;
    const int total = P.num_pass * num_tiles * kPerSlice;
    for (int q = tid; q < total; q += kThreads) {
      const int s = q / kPerSlice, c = q % kPerSlice;  // slice (pass, tile), chunk
      const int pass = s / num_tiles, t = s % num_tiles;
      const int half = c / (kRows * kCpr), row = c / kCpr % kRows, col = c % kCpr;
      const int brow = pass * kRows + row;
      const bool ok = brow < P.kp;
      const T* src = (half ? b_lo : b_hi) + static_cast<int64_t>(ok ? brow : 0) * lpad + t * kTileL + col * kVec;
      copy_basis16(basis_s + s * kSlice + ((half * kRows + row) * kSld + col * kVec) * kElem, src, ok);
    }
    cp_async_commit();  // the oldest group: complete once the first tile is
  }

  // ---- the producer: this block's tiles in order (items blockIdx.x + i gridDim.x, their passes, their tiles),
  // lead = min(kStages - 1, num_tiles) tiles ahead of the consumer, across passes and items.  A segment is one
  // pass over one item's tiles.
  const int step_smp = static_cast<int>(gridDim.x) / num_cb, step_cb = static_cast<int>(gridDim.x) % num_cb;
  const int lead = num_tiles < kStages - 1 ? num_tiles : kStages - 1;
  // this thread's chunks of a slice (not resident): source offsets (in the hi or lo basis: bit i of b_lo_mask),
  // destinations in the stage, and whether their row lies below kp in the producer's pass (bit i of p_bok)
  int b_off[kChunksPerThread > 0 ? kChunksPerThread : 1];
  unsigned b_lo_mask = 0, p_bok = 0;
  auto chunk_row = [&](int i) { return (tid + i * kThreads) / kCpr % (kRows > 0 ? kRows : 1); };
  if constexpr (kChunks > 0) {
#pragma unroll
    for (int i = 0; i < kChunksPerThread; ++i) {
      const int q = tid + i * kThreads;
      const int half = q / (kRows * kCpr), row = chunk_row(i), col = q % kCpr;
      b_lo_mask |= half ? 1u << i : 0u;
      b_off[i] = row * lpad + col * kVec;
    }
  }
  int p_c0 = 0, p_row0 = 0;  // the item's first channel (C: past the block's items); the pass's first basis row
  unsigned p_ok = 0;         // vector path, bit p: this thread's piece p lies in the tensor
  const T* p_src = x;  // this thread's piece 0 in its row of the next tile (the row start on the scalar path)
  auto p_segment = [&](int smp, int cb, int pass) {  // the producer's next segment: item (smp, cb), pass
    const bool live = smp < a.n;
    p_c0 = live ? cb * kBlockC : C;
#pragma unroll
    for (int p = 0; p < kPieces; ++p) p_ok = p_c0 + g * kVec + p * kPs < C ? p_ok | 1u << p : p_ok & ~(1u << p);
    p_src = x + (live ? static_cast<int64_t>(smp) * a.stride_n + (kVecPath ? p_c0 + g * kVec : 0) +
                            static_cast<int64_t>(r) * a.stride_l
                      : 0);
    p_row0 = pass * kRows;
    if constexpr (kChunks > 0) {
      p_bok = 0;
#pragma unroll
      for (int i = 0; i < kChunksPerThread; ++i) {
        p_bok |= tid + i * kThreads < kChunks && p_row0 + chunk_row(i) < P.kp ? 1u << i : 0u;
      }
    }
  };
  auto next_item = [&](int& smp, int& cb) {
    cb += step_cb;
    smp += step_smp;
    if (cb >= num_cb) {
      cb -= num_cb;
      ++smp;
    }
  };
  const unsigned own = (r * kLd + g * kVec) * kElem;  // this thread's piece 0 in a tile
  // The next tile (and its slice) into a stage.  A piece past C is not copied (the consumer reads the fill
  // instead); edge: the tile may have rows past L (only a segment's last tile has them), which are zero-filled.
  auto issue = [&](unsigned stage, auto edge, int ptile) {  // ptile: the tile's index in its segment
    const bool row_ok = !decltype(edge)::value || ptile * kTileL + r < L;
    const T* src = row_ok ? p_src : x;
    if constexpr (kVecPath) {
#pragma unroll
      for (int p = 0; p < kPieces; ++p) {
        if (p_ok >> p & 1u) copy_x16(stage + own + p * kPs * kElem, src + p * kPs, row_ok ? 16 : 0);
      }
    } else {
#pragma unroll 1
      for (int p = 0; p < kPieces; ++p) {  // one piece at a time: the fallback path keeps to few registers
        unsigned w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const int c = p_c0 + p * kPs + g * kVec + v;
          const T* q = src + static_cast<int64_t>(c < C ? c : 0) * a.stride_c;
          const unsigned b = c >= C ? Elem<T>::kFillBits : row_ok ? Elem<T>::bits(*q) : 0u;
          w[v * kElem / 4] |= b << (v * kElem % 4 * 8);
        }
        sts128(stage + own + p * kPs * kElem, make_uint4(w[0], w[1], w[2], w[3]));
      }
    }
#pragma unroll
    for (int i = 0; i < kChunksPerThread; ++i) {
      const int q = tid + i * kThreads;  // (half, row) = q / kCpr, column q % kCpr of the slice
      const bool ok = p_bok >> i & 1u;  // (false past the slice: zeros into the stage's spare room)
      const T* b = (b_lo_mask >> i & 1u ? b_lo : b_hi) + (ok ? b_off[i] + p_row0 * lpad + ptile * kTileL : 0);
      copy_basis16(stage + kSliceAt + (q / kCpr * kSld + q % kCpr * kVec) * kElem, b, ok);
    }
    cp_async_commit();  // possibly empty: keeps the group count uniform
    p_src += kTileL * a.stride_l;
  };
  // The ring has lead + 1 stages in use: the consumer reads tile t from stage t % (lead + 1), and the producer,
  // lead tiles ahead, writes into the stage the consumer read last.
  const unsigned ring_end = ring + (lead + 1) * kStage;
  int smp = static_cast<int>(blockIdx.x) / num_cb;  // the consumer's item
  int cb = static_cast<int>(blockIdx.x) % num_cb;
  p_segment(smp, cb, 0);
  for (int s = 0; s < lead; ++s) issue(ring + s * kStage, std::true_type{}, s);
  unsigned stage = ring, prev = ring_end - kStage;  // the tile being consumed; the one before it

  const unsigned x_frag = x_frag_offset<T>(lane, warp), a_frag = a_frag_offset<T>(lane);
  const unsigned fill = smem_addr(s_fill);
  while (smp < a.n) {
    const int c0 = cb * kBlockC;
    if (tid < kBlockC) {
      const int c = c0 + tid;
      const unsigned bits =
          c < C ? Elem<T>::bits(x[static_cast<int64_t>(smp) * a.stride_n + static_cast<int64_t>(c) * a.stride_c]) : 0u;
      s_shift[tid] = Elem<T>::get(bits, 0);
    }
    __syncthreads();
    float sa[kPer], sb[kPer];
#pragma unroll
    for (int v = 0; v < kPer; ++v) {
      sa[v] = 0.0f;
      sb[v] = 0.0f;
    }
    const unsigned shift_at = smem_addr(s_shift + g * kVec);  // this thread's shifts, read again every tile
    auto shifts = [&](float (&sh)[kVec], int p) {  // the shifts of this thread's piece p
#pragma unroll
      for (int q = 0; q < kVec; q += 4) {
        const uint4 u = lds128(shift_at + (p * kPs + q) * 4);
        sh[q] = __uint_as_float(u.x);
        sh[q + 1] = __uint_as_float(u.y);
        sh[q + 2] = __uint_as_float(u.z);
        sh[q + 3] = __uint_as_float(u.w);
      }
    };
    // lanes g = 0, 1, 2 of a row store its maximum, t and s (ent: [item][max, s, t][lpad])
    const int64_t item = static_cast<int64_t>(smp) * num_cb + cb;
    float* ent = a.ent + (item * 3 + (g == 0 ? 0 : g == 1 ? 2 : 1)) * lpad + r;
    unsigned c_ok = 0;  // bit p: this thread's piece p lies in the tensor (vector path: else it reads the fill)
#pragma unroll
    for (int p = 0; p < kPieces; ++p) c_ok |= !kVecPath || c0 + g * kVec + p * kPs < C ? 1u << p : 0u;
    float e_low = 0.0f;
    unsigned slice = basis_s + a_frag;  // resident: this lane's fragment in the next slice

    // One tile (t): wait for it, (fp32: write d = x - k over it), barrier, copy the producer's tile (ptile of its
    // segment), statistics, MMAs.  pedge / cedge: the producer's / the consumer's tile may have rows past L.
    auto consume = [&](auto stats, auto pedge, auto cedge, int t, int ptile, auto wait,
                       float (&acc)[kF > 0 ? kF : 1][2][4]) {
      wait();  // this thread's pieces of the current tile have landed
      const bool row_in = !decltype(cedge)::value || t * kTileL + r < L;
      uint4 raw[kPieces];
#pragma unroll
      for (int p = 0; p < kPieces; ++p) raw[p] = lds128(c_ok >> p & 1u ? stage + own + p * kPs * kElem : fill);
      if constexpr (kF32 && kF > 0) {  // the operand d = x - k (0 on rows past L), before the barrier
#pragma unroll
        for (int p = 0; p < kPieces; ++p) {
          float val[kVec], sh[kVec];
          unpack<T>(raw[p], val);
          shifts(sh, p);
          uint4 d;
          d.x = __float_as_uint(row_in ? val[0] - sh[0] : 0.0f);
          d.y = __float_as_uint(row_in ? val[1] - sh[1] : 0.0f);
          d.z = __float_as_uint(row_in ? val[2] - sh[2] : 0.0f);
          d.w = __float_as_uint(row_in ? val[3] - sh[3] : 0.0f);
          sts128(stage + own + p * kPs * kElem, d);
        }
      }
      __syncthreads();  // the tile (and its slice) is in shared memory; every warp is done with the one before
      issue(prev, pedge, ptile);
      if constexpr (kF > 0) {
        tile_mma<T, kF>(acc, stage + x_frag, kResident ? slice : stage + kSliceAt + a_frag);
        if constexpr (kResident) slice += kSlice;
      }
      float m = 0.0f, s = 0.0f, tt = 0.0f;
      if constexpr (decltype(stats)::value) m = group_max<Map::kGroups>(thread_max<T>(raw));
#pragma unroll
      for (int p = 0; p < kPieces; ++p) {  // piece by piece: steps 1 and 2
        float val[kVec], sh[kVec];
        unpack<T>(raw[p], val);
        shifts(sh, p);
        if constexpr (decltype(stats)::value) {  // (a row past L holds zeros: its entropy state is not read)
          entropy_sums(val, kVec, m * kLog2e, s, tt, p == 0);
          if (row_in) moment_sums(val, sh, kVec, sa + p * kVec, sb + p * kVec);
        }
      }
      if constexpr (decltype(stats)::value) {
        const float st = group_sum_pair<Map::kGroups>(s, tt);  // s on even lanes, t on odd ones
        if (g < 3) *ent = g == 0 ? m : st;
        ent += kTileL;
      }
      prev = stage;
      stage = stage + kStage == ring_end ? ring : stage + kStage;
    };
    // One pass over the item's tiles.  The producer copies this segment's tiles lead ahead (the steady state),
    // then its last tile, then the next segment's first ones.  Only the last tile has rows past L.
    auto segment = [&](auto stats, int pass, float (&acc)[kF > 0 ? kF : 1][2][4]) {
      const std::false_type inner;
      const std::true_type edge;
      const auto deep = [] { cp_async_wait<kStages - 2>(); };
      const int steady = num_tiles - lead - 1;  // < 0: lead = num_tiles, every copy is the next segment's
      int t = 0;
      for (; t < steady; ++t) consume(stats, inner, inner, t, t + lead, deep, acc);  // the steady-state loop
      if (t == steady) {
        consume(stats, edge, inner, t, num_tiles - 1, deep, acc);
        ++t;
      }
      if (pass + 1 < P.num_pass) {
        p_segment(smp, cb, pass + 1);
      } else {
        int n_smp = smp;
        int n_cb = cb;
        next_item(n_smp, n_cb);
        p_segment(n_smp, n_cb, 0);
      }
      const bool full = lead == kStages - 1;
      for (; t < num_tiles; ++t) {  // the next segment's first copies
        consume(stats, edge, edge, t, t + lead - num_tiles,
                [full] { full ? cp_async_wait<kStages - 2>() : cp_async_wait<0>(); }, acc);
      }
    };

    auto zero = [](float (&acc)[kF > 0 ? kF : 1][2][4]) {
#pragma unroll
      for (int j = 0; j < (kF > 0 ? kF : 1); ++j) {
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[j][i / 4][i % 4] = 0.0f;
      }
    };
    auto low_band = [&](const float (&acc)[kF > 0 ? kF : 1][2][4], int pass) {  // step 3: one pass's rows of E_low
      if constexpr (kF > 0) {
        const float e = low_energy<kF>(acc, pass * kRows, P.kp, s_centre, a.rowsum, C - c0);
        if (lane == 0) s_slot[warp * 4 + 3] = e;
        __syncthreads();
        if (tid == 0) {
          for (int i = 0; i < kWarps; ++i) e_low += s_slot[i * 4 + 3];
        }
      }
    };

    float acc[kF > 0 ? kF : 1][2][4];
    zero(acc);
    segment(std::true_type{}, 0, acc);  // pass 0: statistics and the first rows of the projection
    // reduce the moments: lanes of a group, then the warps in order
#pragma unroll
    for (int v = 0; v < kPer; ++v) {
#pragma unroll
      for (int o = Map::kGroups; o < 32; o <<= 1) {
        sa[v] += __shfl_xor_sync(0xffffffffu, sa[v], o);
        sb[v] += __shfl_xor_sync(0xffffffffu, sb[v], o);
      }
      if (lane < Map::kGroups) {
        s_red[warp * kBlockC + Map::chan(g, v)] = sa[v];
        s_red[(kWarps + warp) * kBlockC + Map::chan(g, v)] = sb[v];
      }
    }
    __syncthreads();
    if (tid < kBlockC) {
      float sum_a = 0.0f, sum_b = 0.0f;
      for (int i = 0; i < kWarps; ++i) {
        sum_a += s_red[i * kBlockC + tid];
        sum_b += s_red[(kWarps + i) * kBlockC + tid];
      }
      const bool valid = c0 + tid < C;
      const ChannelMoments cm = channel_moments(s_shift[tid], sum_a, sum_b, static_cast<float>(L));
      s_centre[tid] = valid ? (kF32 ? cm.mu_off : cm.mu) : 0.0f;
      const float px = group_sum<32>(valid ? static_cast<float>(L) * s_shift[tid] + sum_a : 0.0f);
      const float pm2 = group_sum<32>(valid ? cm.m2 : 0.0f);
      const float pdc = group_sum<32>(valid ? static_cast<float>(L) * cm.mu * cm.mu : 0.0f);
      if (lane == 0) {
        s_slot[warp * 4 + 0] = px;
        s_slot[warp * 4 + 1] = pm2;
        s_slot[warp * 4 + 2] = pdc;
      }
    }
    __syncthreads();
    if (tid < 3) {
      float acc_q = 0.0f;
      for (int i = 0; i < kBlockC / 32; ++i) acc_q += s_slot[i * 4 + tid];
      a.part[item * kPartials + tid] = acc_q;
    }
    low_band(acc, 0);
    for (int pass = 1; pass < P.num_pass; ++pass) {  // further basis rows: the tiles again, projection only
      zero(acc);
      segment(std::false_type{}, pass, acc);
      low_band(acc, pass);
    }
    if (tid == 0) a.part[item * kPartials + 3] = e_low;
    __syncthreads();  // s_shift, s_slot and s_red are reused by the next work item
    next_item(smp, cb);
  }
  cp_async_wait<0>();  // no copy outlives the block
}

//! One block per sample: the channel blocks' partials in order, the entropy states merged in order.
__global__ void __launch_bounds__(kThreads) aselect_stats_combine_kernel(const float* part, const float* ent,
                                                                          float* out, int64_t length,
                                                                          int64_t channels, int num_cb,
                                                                          int64_t out_stride_n,
                                                                          int64_t out_stride_s) {
  __shared__ float s_warp[kWarps];
  const int64_t smp = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t lpad = basis_cols(length);
  float h = 0.0f;
  for (int64_t l = tid; l < length; l += kThreads) {
    const float* e = ent + smp * num_cb * 3 * lpad + l;
    EntState st = ent_state(e[0], e[lpad], e[2 * lpad]);
    for (int cb = 1; cb < num_cb; ++cb) {
      const float* q = e + static_cast<int64_t>(cb) * 3 * lpad;
      st = ent_merge(st, ent_state(q[0], q[lpad], q[2 * lpad]));
    }
    h += ent_value(st);
  }
  h = group_sum<32>(h);
  if ((tid & 31) == 0) s_warp[tid >> 5] = h;
  __syncthreads();
  if (tid == 0) {
    float h_sum = 0.0f;
    for (int i = 0; i < kWarps; ++i) h_sum += s_warp[i];
    float sums[kPartials] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int cb = 0; cb < num_cb; ++cb) {
      for (int q = 0; q < kPartials; ++q) sums[q] += part[(smp * num_cb + cb) * kPartials + q];
    }
    float res[6];
    finalize_stats(sums, h_sum, length, channels, res);
    for (int q = 0; q < 6; ++q) out[smp * out_stride_n + q * out_stride_s] = res[q];
  }
}

constexpr int kMaxDevices = 64;
using MainKernel = void (*)(Args);

template <typename T, bool kVec>
MainKernel main_kernel(int frags, int resident) {
  static_assert(max_frags(sizeof(T)) <= 3, "main_kernel instantiates 0 .. 3 row fragments per warp");
  switch (frags) {
    case 0: return aselect_stats_main_kernel<T, kVec, 0, true>;
    case 1:
      return resident ? aselect_stats_main_kernel<T, kVec, 1, true> : aselect_stats_main_kernel<T, kVec, 1, false>;
    case 2:
      return resident ? aselect_stats_main_kernel<T, kVec, 2, true> : aselect_stats_main_kernel<T, kVec, 2, false>;
    default:
      if constexpr (max_frags(sizeof(T)) == 3) {
        return resident ? aselect_stats_main_kernel<T, kVec, 3, true> : aselect_stats_main_kernel<T, kVec, 3, false>;
      } else {
        return nullptr;  // not planned (make_plan caps frags at max_frags)
      }
  }
}

template <typename T>
int launch_typed(const Args& args, float* out, int64_t out_stride_n, int64_t out_stride_s,
                 cudaStream_t stream) {
  static int sm_count[kMaxDevices] = {0};
  static int smem_set[2 * 8][kMaxDevices] = {{0}};  // per kernel (vec, frags, resident) and device
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev < 0 || dev >= kMaxDevices) return cudaErrorInvalidDevice;
  if (sm_count[dev] == 0) {
    err = cudaDeviceGetAttribute(&sm_count[dev], cudaDevAttrMultiProcessorCount, dev);
    if (err != cudaSuccess) return err;
  }
  const Plan& plan = args.plan;
  const int smem = plan.smem_bytes;
  const int which = (plan.vec ? 8 : 0) + plan.frags * 2 + plan.resident;
  const MainKernel kernel = plan.vec ? main_kernel<T, true>(plan.frags, plan.resident)
                                     : main_kernel<T, false>(plan.frags, plan.resident);
  if (smem > smem_set[which][dev]) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    smem_set[which][dev] = smem;
  }
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  const int64_t work = args.n * plan.num_cb;
  const int64_t resident_blocks = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * sm_count[dev];
  const unsigned grid = static_cast<unsigned>(work < resident_blocks ? work : resident_blocks);
  kernel<<<grid, kThreads, smem, stream>>>(args);
  aselect_stats_combine_kernel<<<static_cast<unsigned>(args.n), kThreads, 0, stream>>>(
      args.part, args.ent, out, args.length, args.channels, plan.num_cb, out_stride_n, out_stride_s);
  return cudaGetLastError();
}

}  // namespace
}  // namespace aselect

extern "C" void aselect_stats_workspace(int64_t n, int64_t length, int64_t channels, int64_t* part_floats,
                                        int64_t* ent_floats) {
  const int64_t num_cb = aselect::cdiv(channels, aselect::kBlockC);
  *part_floats = n * num_cb * aselect::kPartials;
  *ent_floats = n * num_cb * 3 * aselect::basis_cols(length);
}

extern "C" int64_t aselect_stats_basis_cols(int64_t length) { return aselect::basis_cols(length); }

extern "C" int aselect_stats_launch(const void* x, int dtype, int64_t n, int64_t length, int64_t channels,
                                    int64_t stride_n, int64_t stride_l, int64_t stride_c, const void* basis_hi,
                                    const void* basis_lo, const float* rowsum, int kp, float* part, float* ent,
                                    float* out, int64_t out_stride_n, int64_t out_stride_s, cudaStream_t stream) {
  using namespace aselect;
  if (n < 1 || length < 2 || channels < 1 || kp < 0 || kp % kFrag != 0 || n > 0x7fffffff ||
      length > 0x7fffffff || channels > 0x7fffffff || x == nullptr || part == nullptr || ent == nullptr ||
      out == nullptr || (kp > 0 && (basis_hi == nullptr || basis_lo == nullptr || rowsum == nullptr)) ||
      dtype < kFloat32 || dtype > kBFloat16) {
    return cudaErrorInvalidValue;
  }
  Args args;
  args.x = x;
  args.basis_hi = basis_hi;
  args.basis_lo = basis_lo;
  args.rowsum = rowsum;
  args.part = part;
  args.ent = ent;
  args.n = n;
  args.length = length;
  args.channels = channels;
  args.stride_n = stride_n;
  args.stride_l = stride_l;
  args.stride_c = stride_c;
  const int vec = vector_ok(reinterpret_cast<uintptr_t>(x), dtype, channels, stride_n, stride_l, stride_c);
  args.plan = make_plan(length, channels, kp, dtype, vec);
  switch (dtype) {
    case kFloat32:
      return launch_typed<float>(args, out, out_stride_n, out_stride_s, stream);
    case kFloat16:
      return launch_typed<__half>(args, out, out_stride_n, out_stride_s, stream);
    default:
      return launch_typed<__nv_bfloat16>(args, out, out_stride_n, out_stride_s, stream);
  }
}
