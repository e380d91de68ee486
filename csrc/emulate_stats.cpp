// Serial host emulation of the CUDA statistics kernel (aselect_stats.cu), for tests on machines without a GPU.
//
// It runs the kernel's block algorithm thread by thread with the same plan, tile map, tile contents (zeros on
// rows past L, kNegFill on channels past C), shifts, reduction orders (warp butterflies, warps in order, channel
// blocks in order) and the arithmetic of aselect_stats_math.h (entropy_sums, moment_sums, the base-2 entropy
// states).  What it cannot reproduce bit for bit: the tensor-core MMA (emulated as fp32 sums of the same rounded
// operands: the hi/lo basis split, or 3xTF32 with round-to-nearest-away TF32 halves) and the device's ex2.approx
// (exp2f here, with the same flushes to zero).  The memory paths (cp.async ring, ldmatrix fragments, races) are
// not exercised here.
//
// Build: g++ -O2 -shared -fPIC -std=c++17 emulate_stats.cpp -o libaselect_emulate.so
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "aselect_stats_math.h"

namespace {

using namespace aselect;

//! cvt.rna.tf32.f32: round to 10 explicit mantissa bits, ties away from zero.
float tf32_rna(float v) {
  if (!isfinite(v)) return v;
  uint32_t b;
  memcpy(&b, &v, 4);
  b = tf32_rna_bits(b);
  float r;
  memcpy(&r, &b, 4);
  return r;
}

//! xor butterfly over `width` consecutive lanes, as __shfl_xor_sync: every lane ends with the same value.
//! Offsets width / 2 down to 1, or (up) from `first` up to width / 2.
template <typename Op>
void butterfly(std::vector<float>& v, int width, Op op, bool up = false, int first = 1) {
  for (int o = up ? first : width / 2; up ? o < width : o > 0; o = up ? o * 2 : o / 2) {
    std::vector<float> next(v.size());
    for (size_t i = 0; i < v.size(); ++i) next[i] = op(v[i], v[i ^ o]);
    v = next;
  }
}

float add(float a, float b) { return a + b; }
float maxf(float a, float b) { return fmaxf(a, b); }

template <int ElemBytes>
void emulate(const float* x, int dtype, int64_t n, int64_t L, int64_t C, int64_t sn, int64_t sl, int64_t sc,
             const float* b_hi, const float* b_lo, const float* rowsum, int kp, int vec, float* out) {
  using Map = TileMap<ElemBytes>;
  constexpr int kPer = Map::kPer, kGroups = Map::kGroups;
  const bool f32 = dtype == kFloat32;
  const Plan P = make_plan(L, C, kp, dtype, vec);
  const int64_t lpad = basis_cols(L);  // columns of the basis operands, rows of an item's entropy states
  const int rows = P.pass_rows;
  const float lf = static_cast<float>(L);
  std::vector<float> part(static_cast<size_t>(n) * P.num_cb * kPartials);
  std::vector<float> ent(static_cast<size_t>(n) * P.num_cb * 3 * lpad);
  auto X = [&](int64_t s, int64_t l, int64_t c) { return x[s * sn + l * sl + c * sc]; };
  auto B = [&](const float* b, int row, int64_t l) { return row < kp ? b[row * lpad + l] : 0.0f; };

  for (int64_t w = 0; w < n * P.num_cb; ++w) {
    const int64_t smp = w / P.num_cb, c0 = (w % P.num_cb) * kBlockC;
    std::vector<float> shift(kBlockC), centre(kBlockC, 0.0f);
    for (int c = 0; c < kBlockC; ++c) shift[c] = c0 + c < C ? X(smp, 0, c0 + c) : 0.0f;
    std::vector<float> sa(kThreads * kPer, 0.0f), sb(kThreads * kPer, 0.0f);  // per-thread moment registers
    float e_low = 0.0f;
    for (int pass = 0; pass < P.num_pass; ++pass) {
      const int row0 = pass * rows;
      std::vector<float> acc(static_cast<size_t>(rows) * kBlockC, 0.0f);  // [row][channel]
      for (int t = 0; t < P.num_tiles; ++t) {
        const int64_t l0 = static_cast<int64_t>(t) * kTileL;
        std::vector<float> tile(kTileL * kBlockC);  // zeros on rows past L, the fill on channels past C
        for (int r = 0; r < kTileL; ++r) {
          for (int c = 0; c < kBlockC; ++c) {
            tile[r * kBlockC + c] = c0 + c >= C ? kNegFill : l0 + r < L ? X(smp, l0 + r, c0 + c) : 0.0f;
          }
        }
        if (pass == 0) {  // steps 1 and 2: thread tid owns row tid / kGroups and kPer channels of it
          std::vector<float> m(kThreads), s(kThreads), tt(kThreads);
          std::vector<std::vector<float>> vals(kThreads, std::vector<float>(kPer));
          for (int tid = 0; tid < kThreads; ++tid) {
            const int g = Map::group(tid), r = Map::row(tid);
            for (int v = 0; v < kPer; ++v) vals[tid][v] = tile[r * kBlockC + Map::chan(g, v)];
            float mx = vals[tid][0];
            for (int v = 1; v < kPer; ++v) mx = fmaxf(mx, vals[tid][v]);
            m[tid] = mx;
          }
          butterfly(m, kGroups, maxf);
          for (int tid = 0; tid < kThreads; ++tid) {
            entropy_sums(vals[tid].data(), kPer, m[tid] * kLog2e, s[tid], tt[tid], true);
          }
          std::vector<float> st(kThreads);  // pair sums: s on even lanes, t on odd ones
          for (int tid = 0; tid < kThreads; ++tid) {
            st[tid] = tid & 1 ? tt[tid] + tt[tid ^ 1] : s[tid] + s[tid ^ 1];
          }
          butterfly(st, kGroups, add, true, 2);
          for (int tid = 0; tid < kThreads; ++tid) {
            const int g = Map::group(tid), r = Map::row(tid);
            const int64_t l = l0 + r;
            float* e = ent.data() + w * 3 * lpad + l;
            if (g == 0) e[0] = m[tid];
            if (g == 1) e[2 * lpad] = st[tid];
            if (g == 2) e[lpad] = st[tid];
            if (l >= L) continue;
            std::vector<float> k(kPer);
            for (int v = 0; v < kPer; ++v) k[v] = shift[Map::chan(g, v)];
            moment_sums(vals[tid].data(), k.data(), kPer, &sa[tid * kPer], &sb[tid * kPer]);
          }
        }
        // step 3: the tensor-core operand and the MMA, in fp32 sums of the same rounded products
        for (int i = 0; i < rows; ++i) {
          const int brow = row0 + i;
          for (int c = 0; c < kBlockC; ++c) {
            float a = acc[i * kBlockC + c];
            for (int r = 0; r < kTileL; ++r) {
              const int64_t l = l0 + r;
              const float bh = B(b_hi, brow, l), bl = B(b_lo, brow, l);
              if (f32) {
                const float d = l < L ? tile[r * kBlockC + c] - shift[c] : 0.0f;
                const float xh = tf32_rna(d), xl = tf32_rna(d - xh);
                a += bl * xh + bh * xl + bh * xh;
              } else {
                const float xv = tile[r * kBlockC + c];
                a += bl * xv + bh * xv;
              }
            }
            acc[i * kBlockC + c] = a;
          }
        }
      }
      if (pass == 0) {  // moments: lanes sharing a group (xor kGroups .. 16), then warps in order
        std::vector<float> ra(kWarps * kBlockC), rb(kWarps * kBlockC);
        for (int v = 0; v < kPer; ++v) {
          std::vector<float> va(kThreads), vb(kThreads);
          for (int tid = 0; tid < kThreads; ++tid) {
            va[tid] = sa[tid * kPer + v];
            vb[tid] = sb[tid * kPer + v];
          }
          butterfly(va, 32, add, true, kGroups);
          butterfly(vb, 32, add, true, kGroups);
          for (int tid = 0; tid < kThreads; ++tid) {
            if ((tid & 31) < kGroups) {
              ra[(tid >> 5) * kBlockC + Map::chan(Map::group(tid), v)] = va[tid];
              rb[(tid >> 5) * kBlockC + Map::chan(Map::group(tid), v)] = vb[tid];
            }
          }
        }
        std::vector<float> px(kBlockC), pm2(kBlockC), pdc(kBlockC);
        for (int c = 0; c < kBlockC; ++c) {
          float suma = 0.0f, sumb = 0.0f;
          for (int i = 0; i < kWarps; ++i) {
            suma += ra[i * kBlockC + c];
            sumb += rb[i * kBlockC + c];
          }
          const bool valid = c0 + c < C;
          const ChannelMoments cm = channel_moments(shift[c], suma, sumb, lf);
          centre[c] = valid ? (f32 ? cm.mu_off : cm.mu) : 0.0f;
          px[c] = valid ? lf * shift[c] + suma : 0.0f;
          pm2[c] = valid ? cm.m2 : 0.0f;
          pdc[c] = valid ? lf * cm.mu * cm.mu : 0.0f;
        }
        butterfly(px, 32, add);
        butterfly(pm2, 32, add);
        butterfly(pdc, 32, add);
        float q[3] = {0.0f, 0.0f, 0.0f};
        for (int i = 0; i < kBlockC / 32; ++i) {
          q[0] += px[i * 32];
          q[1] += pm2[i * 32];
          q[2] += pdc[i * 32];
        }
        for (int k = 0; k < 3; ++k) part[w * kPartials + k] = q[k];
      }
      if (rows > 0) {  // E_low: warp w's 16 channels, each lane's fragment elements in order, warps in order
        std::vector<float> lane_e(kThreads, 0.0f);
        for (int tid = 0; tid < kThreads; ++tid) {
          const int lane = tid & 31, warp = tid >> 5;
          float e = 0.0f;
          for (int j = 0; j < P.frags; ++j) {
            for (int i = 0; i < 4; ++i) {
              const int row = j * kFrag + (lane >> 2) + 8 * (i >> 1);
              const float rs = row0 + row < kp ? rowsum[row0 + row] : 0.0f;
              for (int h = 0; h < 2; ++h) {
                const int ch = warp * kFrag + 8 * h + 2 * (lane & 3) + (i & 1);
                const float v = c0 + ch < C ? acc[row * kBlockC + ch] - rs * centre[ch] : 0.0f;
                e = fmaf(v, v, e);
              }
            }
          }
          lane_e[tid] = e;
        }
        butterfly(lane_e, 32, add);
        for (int i = 0; i < kWarps; ++i) e_low += lane_e[i * 32];
      }
    }
    part[w * kPartials + 3] = e_low;
  }

  // combine: rows strided over the threads, states merged in channel-block order, warps in order
  for (int64_t smp = 0; smp < n; ++smp) {
    std::vector<float> h(kThreads, 0.0f);
    for (int64_t l = 0; l < L; ++l) {
      const float* e = ent.data() + smp * P.num_cb * 3 * lpad + l;
      EntState st = ent_state(e[0], e[lpad], e[2 * lpad]);
      for (int cb = 1; cb < P.num_cb; ++cb) {
        const float* q = e + static_cast<int64_t>(cb) * 3 * lpad;
        st = ent_merge(st, ent_state(q[0], q[lpad], q[2 * lpad]));
      }
      h[l % kThreads] += ent_value(st);
    }
    butterfly(h, 32, add);
    float h_sum = 0.0f;
    for (int i = 0; i < kWarps; ++i) h_sum += h[i * 32];
    float sums[kPartials] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int cb = 0; cb < P.num_cb; ++cb) {
      for (int q = 0; q < kPartials; ++q) sums[q] += part[(smp * P.num_cb + cb) * kPartials + q];
    }
    finalize_stats(sums, h_sum, L, C, out + smp * 6);
  }
}

}  // namespace

extern "C" {

//! Statistics [n, 6] of x (float values of an fp32/fp16/bf16 tensor, strides in elements) by the kernel's
//! block algorithm; the basis operands as floats, [kp, basis_cols(length)] each (hi and lo halves: of the input
//! dtype, or the TF32 halves of the fp32 basis).
//! Returns 0, or 1 on bad sizes.
int aselect_emulate_stats(const float* x, int dtype, int64_t n, int64_t length, int64_t channels, int64_t stride_n,
                          int64_t stride_l, int64_t stride_c, const float* basis_hi, const float* basis_lo,
                          const float* rowsum, int kp, int vec, float* out) {
  if (n < 1 || length < 2 || channels < 1 || kp < 0 || kp % kFrag != 0 || dtype < 0 || dtype > 2) return 1;
  if (dtype == kFloat32) {
    emulate<4>(x, dtype, n, length, channels, stride_n, stride_l, stride_c, basis_hi, basis_lo, rowsum, kp, vec,
               out);
  } else {
    emulate<2>(x, dtype, n, length, channels, stride_n, stride_l, stride_c, basis_hi, basis_lo, rowsum, kp, vec,
               out);
  }
  return 0;
}

//! The helpers the kernel shares with this emulation, for tests: exp2_ftz of n values.
void aselect_emulate_exp2(const float* y, int n, float* out) {
  for (int i = 0; i < n; ++i) out[i] = exp2_ftz(y[i]);
}

//! The entropy of one row split into blocks of the given sizes, as the kernel computes it: per block its maximum
//! and entropy_sums, the states (maximum, s, t) merged in block order, ent_value.
float aselect_emulate_row_entropy(const float* v, const int* sizes, int blocks) {
  EntState st{0.0f, 0.0f, 0.0f};
  for (int b = 0; b < blocks; ++b) {
    float m = v[0];
    for (int i = 1; i < sizes[b]; ++i) m = fmaxf(m, v[i]);
    float s = 0.0f, t = 0.0f;
    entropy_sums(v, sizes[b], m * kLog2e, s, t, true);
    st = b == 0 ? ent_state(m, s, t) : ent_merge(st, ent_state(m, s, t));
    v += sizes[b];
  }
  return ent_value(st);
}

//! TileMap::chan(g, v) of a thread's values for elements of elem bytes.
int aselect_emulate_chan(int elem, int g, int v) {
  return elem == 4 ? TileMap<4>::chan(g, v) : TileMap<2>::chan(g, v);
}

//! cvt.rna.tf32.f32 of n finite values, as the kernel rounds the fp32 operand.
void aselect_emulate_tf32(const float* x, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    uint32_t b;
    memcpy(&b, &x[i], 4);
    b = tf32_rna_bits(b);
    memcpy(&out[i], &b, 4);
  }
}

//! The launch plan the kernel would use: num_cb, num_tiles, kp, frags, pass_rows, num_pass, resident, stages,
//! stage_bytes, vec, smem_bytes (in this order), vec from the launcher's own alignment rule for address `addr`.
void aselect_emulate_plan(int64_t length, int64_t channels, int kp, int dtype, uint64_t addr, int64_t stride_n,
                          int64_t stride_l, int64_t stride_c, int* plan_out) {
  const int vec = vector_ok(static_cast<uintptr_t>(addr), dtype, channels, stride_n, stride_l, stride_c);
  const Plan p = make_plan(length, channels, kp, dtype, vec);
  const int values[11] = {p.num_cb, p.num_tiles, p.kp, p.frags, p.pass_rows, p.num_pass, p.resident, p.stages,
                          p.stage_bytes, p.vec, p.smem_bytes};
  for (int i = 0; i < 11; ++i) plan_out[i] = values[i];
}
}
