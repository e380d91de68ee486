// The six per-sample statistics of a tapped tensor x [N, L, C] in CUDA C++ (no torch headers).
//
// The definition of record is aselect_kernels/reference.py; the algorithm is the Triton kernel's
// (aselect_kernels/ops/fused_stats.py), with the arithmetic shared with a host emulation in
// aselect_stats_math.h.  The plan:
//
// * Work items are (sample n, channel block of kBlockC = 128 channels).  A persistent grid (as many blocks as
//   fit on the device at once) walks them in order.  Tokens are never split across blocks: the low-frequency
//   projection must be squared after it is summed over all L tokens.
// * A block walks the L tokens in tiles [kTileL = 32, 128].  Each thread owns 16 bytes of each of a few rows.
//   With a unit channel stride and 16-byte aligned rows they are copied by cp.async (16-byte global loads
//   straight into shared memory) into a ring of kStages tiles, kStages - 1 tiles ahead of the one being
//   consumed and across work items; with other strides, scalar loads fill the same ring.
// * Step 1, moments with a shift k_c = x[n, 0, c]: each thread reads back its own pieces and sums d = x - k_c
//   and d^2 for its channels in registers; at the end of the sample a warp-shuffle reduction, then the 8 warps' partials in a fixed order.
// * Step 2, entropy: the threads of one tile row are consecutive lanes of a warp, so the row's max and its
//   (s, t) sums over the block's channels are warp-shuffle reductions.  The state (m, s, t) of each row is
//   written out and merged over the channel blocks, in order, by the combine kernel.
// * Step 3, low-frequency energy: proj [K, 128] += B [K, tile] @ tile on tensor cores (wmma), fp32
//   accumulators in registers, the tile staged in shared memory.  fp16/bf16: the raw tile (exact) times
//   B = B_hi + B_lo, both in the input dtype (two MMAs).  fp32: the shifted tile d = x - k times the fp32 basis
//   on TF32 tensor cores with both operands split into hi + lo TF32 halves (three MMAs, "3xTF32").  The mean
//   leak of the rounded basis is removed exactly: E_low = sum (proj - rowsum(B) centre)^2 with centre = mu
//   (raw operand) or mu - k (shifted operand).  The basis lives in shared memory: loaded once per block for the
//   block's whole life when it fits (kResidentBasisBytes), else one [rows, tile] slice per tile.  More than
//   kPassRows basis rows take further passes over the sample's tiles (re-read from L2).
// * Step 4: each work item writes 4 partial sums (sum x, sum M2, sum L mu^2, E_low) and its entropy states; the
//   combine kernel (one block per sample) adds them over the channel blocks in order.  No float atomics: the
//   result is bitwise deterministic and does not depend on the batch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "aselect_stats.h"
#include "aselect_stats_math.h"

namespace aselect {
namespace {

using namespace nvcuda;

// ---- element conversion from the raw 16-bit / 32-bit words held in registers ----------------------------
__device__ __forceinline__ unsigned word_of(const uint4& u, int i) {
  return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

template <typename T>
struct Elem;

template <>
struct Elem<float> {
  __device__ static float get(const uint4& u, int v) { return __uint_as_float(word_of(u, v)); }
  __device__ static unsigned bits(float v) { return __float_as_uint(v); }
  __device__ static float zero() { return 0.0f; }
};

template <>
struct Elem<__half> {
  __device__ static float get(const uint4& u, int v) {
    const unsigned w = word_of(u, v >> 1);
    return __half2float(__ushort_as_half(static_cast<unsigned short>((v & 1) ? w >> 16 : w & 0xffffu)));
  }
  __device__ static unsigned bits(__half v) { return __half_as_ushort(v); }
  __device__ static __half zero() { return __ushort_as_half(0); }
};

template <>
struct Elem<__nv_bfloat16> {
  __device__ static float get(const uint4& u, int v) {
    const unsigned w = word_of(u, v >> 1);
    return __uint_as_float((v & 1) ? (w & 0xffff0000u) : (w << 16));
  }
  __device__ static unsigned bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
  __device__ static __nv_bfloat16 zero() { return __ushort_as_bfloat16(0); }
};

__device__ __forceinline__ void set_word(uint4& u, int i, unsigned w) {
  if (i == 0) u.x = w; else if (i == 1) u.y = w; else if (i == 2) u.z = w; else u.w = w;
}

// ---- warp reductions over groups of consecutive lanes (xor butterflies: every lane gets the result) --------
template <int Width>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int o = Width / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <int Width>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = Width / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- tensor-core steps: acc += B[16 rows, kK tokens] @ tile[kK tokens, 16 channels] ------------------------
template <typename T>
struct HalfMma {  // fp16 / bf16: B_hi and B_lo in the input dtype, the raw tile (exact)
  static constexpr int kK = 16;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  __device__ static void step(Acc& acc, const T* b_hi, const T* b_lo, int ldb, const T* tile, int ldt) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_hi, a_lo;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> xb;
    wmma::load_matrix_sync(xb, tile, ldt);
    wmma::load_matrix_sync(a_lo, b_lo, ldb);
    wmma::load_matrix_sync(a_hi, b_hi, ldb);
    wmma::mma_sync(acc, a_lo, xb, acc);  // the small term first
    wmma::mma_sync(acc, a_hi, xb, acc);
  }
};

struct Tf32x3Mma {  // fp32: both operands split into TF32 hi + lo, the lo * lo term dropped
  static constexpr int kK = 8;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
  template <typename Frag>
  __device__ static void split(Frag& hi, Frag& lo) {
#pragma unroll
    for (int i = 0; i < hi.num_elements; ++i) {
      const float v = hi.x[i];
      hi.x[i] = wmma::__float_to_tf32(v);
      lo.x[i] = wmma::__float_to_tf32(v - hi.x[i]);
    }
  }
  __device__ static void step(Acc& acc, const float* b, const float*, int ldb, const float* tile, int ldt) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a_hi, a_lo;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> x_hi, x_lo;
    wmma::load_matrix_sync(a_hi, b, ldb);
    wmma::load_matrix_sync(x_hi, tile, ldt);
    split(a_hi, a_lo);
    split(x_hi, x_lo);
    wmma::mma_sync(acc, a_lo, x_hi, acc);
    wmma::mma_sync(acc, a_hi, x_lo, acc);
    wmma::mma_sync(acc, a_hi, x_hi, acc);
  }
};

template <typename T>
struct MmaFor {
  using type = HalfMma<T>;
};
template <>
struct MmaFor<float> {
  using type = Tf32x3Mma;
};

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

template <typename T>
struct Smem {  // the layout of smem_layout, for an element type
  static constexpr int kStages = ring_stages(sizeof(T));
  static constexpr int kLdt = tile_ld(sizeof(T));
  static constexpr int kTileBytes = tile_bytes(sizeof(T));
};

//! Rows [row0, row0 + rows) and token columns [col0, col0 + cols) of the basis into shared memory (0 past L).
template <typename T>
__device__ void load_basis(T* dst_hi, T* dst_lo, const T* hi, const T* lo, int row0, int rows, int64_t col0,
                           int cols, int64_t length, int ld) {
  const T zero = Elem<T>::zero();
  for (int idx = threadIdx.x; idx < rows * cols; idx += kThreads) {
    const int r = idx / cols, c = idx - r * cols;
    const int64_t l = col0 + c;
    const int64_t src = static_cast<int64_t>(row0 + r) * length + l;
    const bool ok = l < length;
    dst_hi[r * ld + c] = ok ? hi[src] : zero;
    if constexpr (sizeof(T) != 4) dst_lo[r * ld + c] = ok ? lo[src] : zero;
  }
}

// ---- asynchronous copies global -> shared (sm_80+) ---------------------------------------------------------
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int bytes = valid ? 16 : 0;  // 0: no read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

//! This thread's 16-byte pieces of tile [l0, l0 + kTileL) into a shared-memory stage (zeros outside the tensor):
//! cp.async on the vector path, plain loads and stores otherwise.  Each thread later reads back only its own.
template <typename T, bool kVecPath>
__device__ __forceinline__ void issue_tile(T* stage, const T* xs, int64_t l0, int64_t c_first, const Args& a) {
  using Map = TileMap<sizeof(T)>;
  const int g = Map::group(threadIdx.x);
#pragma unroll
  for (int j = 0; j < Map::kSteps; ++j) {
    const int r = Map::row(threadIdx.x, j);
    const int64_t l = l0 + r;
    const bool ok = l < a.length && c_first < a.channels;
    T* dst = stage + r * Smem<T>::kLdt + g * Map::kVec;
    if constexpr (kVecPath) {
      cp_async16(dst, ok ? static_cast<const void*>(xs + l * a.stride_l + c_first) : static_cast<const void*>(xs),
                 ok);
    } else {
      uint4 u = make_uint4(0u, 0u, 0u, 0u);
      if (ok) {
        constexpr int kPerWord = 4 / sizeof(T);
        const T* p = xs + l * a.stride_l + c_first * a.stride_c;
        const int n_ok = static_cast<int>(a.channels - c_first);  // > 0 here
#pragma unroll
        for (int v = 0; v < Map::kVec; ++v) {
          const unsigned b = v < n_ok ? Elem<T>::bits(*p) : 0u;
          p += a.stride_c;
          const int shift = (v % kPerWord) * 16;
          set_word(u, v / kPerWord, word_of(u, v / kPerWord) | (b << shift));
        }
      }
      *reinterpret_cast<uint4*>(dst) = u;
    }
  }
}

//! E_low contribution of this warp's accumulator fragments: sum (proj - rowsum * centre)^2 (every lane).
template <typename Acc>
__device__ float low_energy(Acc (&acc)[kMaxFragsPerWarp], int nfrag, int row0, float* scratch,
                            const float* centre, const float* rowsum) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int col = lane & 15, r_first = (lane >> 4) * 8;
  float e = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxFragsPerWarp; ++j) {
    const int f = warp + j * kWarps;
    if (f < nfrag) {
      const int rt = f / kColFrags, ct = f % kColFrags;
      wmma::store_matrix_sync(scratch, acc[j], kFrag, wmma::mem_row_major);
      __syncwarp();
      const float cen = centre[ct * kFrag + col];
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        const float v = scratch[(r_first + r) * kFrag + col] - rowsum[row0 + rt * kFrag + r_first + r] * cen;
        e += v * v;
      }
      __syncwarp();
    }
  }
  return group_sum<32>(e);
}

template <typename T, bool kVecPath>
__global__ void __launch_bounds__(kThreads, 2) aselect_stats_main_kernel(Args a) {
  using Map = TileMap<sizeof(T)>;
  using Mma = typename MmaFor<T>::type;
  using S = Smem<T>;
  constexpr bool kF32 = sizeof(T) == 4;
  constexpr int kVec = Map::kVec;
  constexpr int kStages = S::kStages;
  const Plan& P = a.plan;
  extern __shared__ __align__(128) unsigned char smem[];
  float* s_shift = reinterpret_cast<float*>(smem);
  float* s_centre = s_shift + kBlockC;
  float* s_slot = s_centre + kBlockC;  // [kWarps][4]
  float* s_red = reinterpret_cast<float*>(smem + kHeadBytes);  // moment partials, later the fragment scratch
  unsigned char* stages = smem + kHeadBytes + kRedBytes;
  T* s_bhi = reinterpret_cast<T*>(stages + kStages * S::kTileBytes);
  T* s_blo = s_bhi + basis_rows(P) * P.basis_ld;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = Map::group(tid);
  const int64_t L = a.length, C = a.channels;
  const float lf = static_cast<float>(L);
  const T* x = static_cast<const T*>(a.x);
  const T* b_hi = static_cast<const T*>(a.basis_hi);
  const T* b_lo = static_cast<const T*>(a.basis_lo);
  auto stage_ptr = [&](int64_t q) { return reinterpret_cast<T*>(stages + (q % kStages) * S::kTileBytes); };

  if (P.resident && P.kp > 0) {  // the whole basis, once for the block's lifetime
    load_basis(s_bhi, s_blo, b_hi, b_lo, 0, P.kp, 0, P.basis_cols, L, P.basis_ld);
  }
  // The tiles this block reads, in order: its work items (blockIdx.x + i gridDim.x), passes, tiles.  Copies run
  // kStages - 1 tiles ahead of the tile being consumed, across work-item boundaries too.
  const int64_t num_work = a.n * P.num_cb;
  const int64_t per_item = static_cast<int64_t>(P.num_pass) * P.num_tiles;
  const int64_t total = (num_work - blockIdx.x + gridDim.x - 1) / gridDim.x * per_item;
  int64_t issued = 0;
  auto issue_next = [&]() {
    if (issued < total) {
      const int64_t item = issued / per_item;
      const int t = static_cast<int>(issued % per_item % P.num_tiles);
      const int64_t w = blockIdx.x + item * gridDim.x;
      issue_tile<T, kVecPath>(stage_ptr(issued), x + (w / P.num_cb) * a.stride_n, static_cast<int64_t>(t) * kTileL,
                              (w % P.num_cb) * kBlockC + g * kVec, a);
    }
    cp_async_commit();  // possibly empty: keeps the group count uniform
    ++issued;
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue_next();
  int64_t consumed = 0;

  for (int64_t w = blockIdx.x; w < num_work; w += gridDim.x) {
    const int64_t smp = w / P.num_cb, c0 = (w % P.num_cb) * kBlockC, c_first = c0 + g * kVec;
    const T* xs = x + smp * a.stride_n;
    if (tid < kBlockC) {
      const int64_t c = c0 + tid;
      uint4 u = make_uint4(c < C ? Elem<T>::bits(xs[c * a.stride_c]) : 0u, 0u, 0u, 0u);
      s_shift[tid] = Elem<T>::get(u, 0);
    }
    __syncthreads();
    float sh[kVec], sa[kVec], sb[kVec];
    bool cv[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      cv[v] = c_first + v < C;
      sh[v] = s_shift[g * kVec + v];
      sa[v] = 0.0f;
      sb[v] = 0.0f;
    }
    float e_low = 0.0f;
    float* ent = a.ent + w * 3 * L;

    for (int pass = 0; pass < P.num_pass; ++pass) {
      const int row0 = pass * P.pass_rows;
      const int rows = P.kp - row0 < P.pass_rows ? P.kp - row0 : P.pass_rows;
      const int nfrag = rows / kFrag * kColFrags;
      typename Mma::Acc acc[kMaxFragsPerWarp];
#pragma unroll
      for (int j = 0; j < kMaxFragsPerWarp; ++j) wmma::fill_fragment(acc[j], 0.0f);

      for (int t = 0; t < P.num_tiles; ++t, ++consumed) {
        const int64_t l0 = static_cast<int64_t>(t) * kTileL;
        T* s_tile = stage_ptr(consumed);
        issue_next();  // into the stage consumed last iteration (released by that iteration's final barrier)
        cp_async_wait<kStages - 1>();  // this thread's pieces of the current tile have landed
#pragma unroll
        for (int j = 0; j < Map::kSteps; ++j) {
          const int r = Map::row(tid, j);
          const int64_t l = l0 + r;
          T* piece = s_tile + r * S::kLdt + g * kVec;
          const uint4 raw = *reinterpret_cast<const uint4*>(piece);
          float val[kVec];
#pragma unroll
          for (int v = 0; v < kVec; ++v) val[v] = Elem<T>::get(raw, v);
          if (pass == 0) {  // steps 1 and 2
            float m = -INFINITY;
#pragma unroll
            for (int v = 0; v < kVec; ++v) {
              if (cv[v]) m = fmaxf(m, val[v]);
            }
            m = group_max<Map::kGroups>(m);
            float s = 0.0f, tt = 0.0f;
#pragma unroll
            for (int v = 0; v < kVec; ++v) {
              if (cv[v]) {
                const float z = val[v] - m;
                const float e = __expf(z);
                s += e;
                tt += e * z;
              }
            }
            s = group_sum<Map::kGroups>(s);
            tt = group_sum<Map::kGroups>(tt);
            if (l < L) {
              if (g == 0) {
                ent[l] = m;
                ent[L + l] = s;
                ent[2 * L + l] = tt;
              }
#pragma unroll
              for (int v = 0; v < kVec; ++v) {
                if (cv[v]) {
                  const float d = val[v] - sh[v];
                  sa[v] += d;
                  sb[v] += d * d;
                }
              }
            }
          }
          if constexpr (kF32) {  // the operand is d = x - k (0 outside the tensor), written over x in place
            if (nfrag > 0) {
              const bool lv = l < L;
              float4 d;
              d.x = lv && cv[0] ? val[0] - sh[0] : 0.0f;
              d.y = lv && cv[1] ? val[1] - sh[1] : 0.0f;
              d.z = lv && cv[2] ? val[2] - sh[2] : 0.0f;
              d.w = lv && cv[3] ? val[3] - sh[3] : 0.0f;
              *reinterpret_cast<float4*>(piece) = d;
            }
          }
        }
        if (nfrag > 0 && !P.resident) load_basis(s_bhi, s_blo, b_hi, b_lo, row0, rows, l0, kTileL, L, P.basis_ld);
        __syncthreads();  // the whole tile (and the basis slice) is in shared memory
        if (nfrag > 0) {
          const int brow = P.resident ? row0 : 0;
          const int bcol = P.resident ? static_cast<int>(l0) : 0;
#pragma unroll
          for (int j = 0; j < kMaxFragsPerWarp; ++j) {
            const int f = warp + j * kWarps;
            if (f < nfrag) {
              const int rt = f / kColFrags, ct = f % kColFrags;
              const int boff = (brow + rt * kFrag) * P.basis_ld + bcol;
#pragma unroll 1
              for (int k = 0; k < kTileL; k += Mma::kK) {
                Mma::step(acc[j], s_bhi + boff + k, s_blo + boff + k, P.basis_ld, s_tile + k * S::kLdt + ct * kFrag,
                          S::kLdt);
              }
            }
          }
        }
        __syncthreads();  // every warp is done with this stage (and the basis slice)
      }

      if (pass == 0) {  // reduce the moments: lanes of a group, then the warps in order
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
#pragma unroll
          for (int o = Map::kGroups; o < 32; o <<= 1) {
            sa[v] += __shfl_xor_sync(0xffffffffu, sa[v], o);
            sb[v] += __shfl_xor_sync(0xffffffffu, sb[v], o);
          }
          if (lane < Map::kGroups) {
            s_red[warp * kBlockC + g * kVec + v] = sa[v];
            s_red[(kWarps + warp) * kBlockC + g * kVec + v] = sb[v];
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
          const ChannelMoments cm = channel_moments(s_shift[tid], sum_a, sum_b, lf);
          s_centre[tid] = valid ? (kF32 ? cm.mu_off : cm.mu) : 0.0f;
          const float px = group_sum<32>(valid ? lf * s_shift[tid] + sum_a : 0.0f);
          const float pm2 = group_sum<32>(valid ? cm.m2 : 0.0f);
          const float pdc = group_sum<32>(valid ? lf * cm.mu * cm.mu : 0.0f);
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
          a.part[w * kPartials + tid] = acc_q;
        }
      }
      if (nfrag > 0) {  // step 3: this pass's rows of E_low (s_centre is written, s_red is free)
        const float e = low_energy(acc, nfrag, row0, s_red + warp * kFrag * kFrag, s_centre, a.rowsum);
        if (lane == 0) s_slot[warp * 4 + 3] = e;
        __syncthreads();
        if (tid == 0) {
          for (int i = 0; i < kWarps; ++i) e_low += s_slot[i * 4 + 3];
        }
      }
    }
    if (tid == 0) a.part[w * kPartials + 3] = e_low;
    __syncthreads();  // s_shift, s_slot and s_red are reused by the next work item
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
  float h = 0.0f;
  for (int64_t l = tid; l < length; l += kThreads) {
    const float* e = ent + smp * num_cb * 3 * length + l;
    EntState st = {e[0], e[length], e[2 * length]};
    for (int cb = 1; cb < num_cb; ++cb) {
      const float* q = e + static_cast<int64_t>(cb) * 3 * length;
      st = ent_merge(st, EntState{q[0], q[length], q[2 * length]});
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

template <typename T>
int launch_typed(const Args& args, float* out, int64_t out_stride_n, int64_t out_stride_s,
                 cudaStream_t stream) {
  static int sm_count[kMaxDevices] = {0};
  static int smem_set[2][kMaxDevices] = {{0}, {0}};
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev < 0 || dev >= kMaxDevices) return cudaErrorInvalidDevice;
  if (sm_count[dev] == 0) {
    err = cudaDeviceGetAttribute(&sm_count[dev], cudaDevAttrMultiProcessorCount, dev);
    if (err != cudaSuccess) return err;
  }
  const int smem = args.plan.smem_bytes;
  const int vec = args.plan.vec ? 1 : 0;
  auto kernel = vec ? aselect_stats_main_kernel<T, true> : aselect_stats_main_kernel<T, false>;
  if (smem > smem_set[vec][dev]) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    smem_set[vec][dev] = smem;
  }
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  const int64_t work = args.n * args.plan.num_cb;
  const int64_t resident_blocks = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * sm_count[dev];
  const unsigned grid = static_cast<unsigned>(work < resident_blocks ? work : resident_blocks);
  kernel<<<grid, kThreads, smem, stream>>>(args);
  aselect_stats_combine_kernel<<<static_cast<unsigned>(args.n), kThreads, 0, stream>>>(
      args.part, args.ent, out, args.length, args.channels, args.plan.num_cb, out_stride_n, out_stride_s);
  return cudaGetLastError();
}

}  // namespace
}  // namespace aselect

extern "C" void aselect_stats_workspace(int64_t n, int64_t length, int64_t channels, int64_t* part_floats,
                                        int64_t* ent_floats) {
  const int64_t num_cb = aselect::cdiv(channels, aselect::kBlockC);
  *part_floats = n * num_cb * aselect::kPartials;
  *ent_floats = n * num_cb * 3 * length;
}

extern "C" int aselect_stats_launch(const void* x, int dtype, int64_t n, int64_t length, int64_t channels,
                                    int64_t stride_n, int64_t stride_l, int64_t stride_c, const void* basis_hi,
                                    const void* basis_lo, const float* rowsum, int kp, float* part, float* ent,
                                    float* out, int64_t out_stride_n, int64_t out_stride_s, cudaStream_t stream) {
  using namespace aselect;
  if (n < 1 || length < 2 || channels < 1 || kp < 0 || kp % kFrag != 0 || n > 0x7fffffff ||
      length > 0x7fffffff || channels > 0x7fffffff || x == nullptr || part == nullptr || ent == nullptr ||
      out == nullptr || (kp > 0 && (basis_hi == nullptr || rowsum == nullptr)) ||
      (kp > 0 && dtype != kFloat32 && basis_lo == nullptr) || dtype < kFloat32 || dtype > kBFloat16) {
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
