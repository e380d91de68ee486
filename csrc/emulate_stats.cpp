// Serial host emulation of the CUDA statistics kernel (aselect_stats.cu), for tests on machines without a GPU.
//
// It runs the kernel's block algorithm thread by thread with the same plan, tile map, shifts, reduction orders
// (warp butterflies, warps in order, channel blocks in order) and the arithmetic of aselect_stats_math.h.
// What it cannot reproduce bit for bit: the tensor-core MMA (emulated as fp32 sums of the same rounded
// operands: the hi/lo basis split, or 3xTF32 with round-to-nearest-away TF32 halves) and the fast exponential.
// The memory paths (16-byte vs scalar loads, shared memory, races) are not exercised here.
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
  b = (b + 0x1000u) & 0xffffe000u;
  float r;
  memcpy(&r, &b, 4);
  return r;
}

//! xor butterfly over `width` consecutive lanes, as __shfl_xor_sync: every lane ends with the same value.
template <typename Op>
void butterfly(std::vector<float>& v, int width, Op op) {
  for (int o = width / 2; o > 0; o >>= 1) {
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
  constexpr int kVec = Map::kVec;
  const bool f32 = dtype == kFloat32;
  const Plan P = make_plan(L, C, kp, dtype, vec);
  const float lf = static_cast<float>(L);
  std::vector<float> part(static_cast<size_t>(n) * P.num_cb * kPartials);
  std::vector<float> ent(static_cast<size_t>(n) * P.num_cb * 3 * L);
  auto X = [&](int64_t s, int64_t l, int64_t c) { return x[s * sn + l * sl + c * sc]; };

  for (int64_t w = 0; w < n * P.num_cb; ++w) {
    const int64_t smp = w / P.num_cb, c0 = (w % P.num_cb) * kBlockC;
    std::vector<float> shift(kBlockC), centre(kBlockC, 0.0f);
    for (int c = 0; c < kBlockC; ++c) shift[c] = c0 + c < C ? X(smp, 0, c0 + c) : 0.0f;
    // per-thread moment registers sa/sb [thread][v]
    std::vector<float> sa(kThreads * kVec, 0.0f), sb(kThreads * kVec, 0.0f);
    float e_low = 0.0f;
    for (int pass = 0; pass < P.num_pass; ++pass) {
      const int row0 = pass * P.pass_rows;
      const int rows = P.kp - row0 < P.pass_rows ? P.kp - row0 : P.pass_rows;
      const int nfrag = rows / kFrag * kColFrags;
      std::vector<float> acc(static_cast<size_t>(nfrag) * kFrag * kFrag, 0.0f);
      for (int t = 0; t < P.num_tiles; ++t) {
        const int64_t l0 = static_cast<int64_t>(t) * kTileL;
        std::vector<float> tile(kTileL * kBlockC, 0.0f);  // the tile's values, zeros outside the tensor
        for (int r = 0; r < kTileL; ++r) {
          for (int c = 0; c < kBlockC; ++c) {
            if (l0 + r < L && c0 + c < C) tile[r * kBlockC + c] = X(smp, l0 + r, c0 + c);
          }
        }
        if (pass == 0) {
          for (int j = 0; j < Map::kSteps; ++j) {
            // entropy: lanes of a row, then butterflies over kGroups lanes (per warp: rows in groups of lanes)
            std::vector<float> m(kThreads), s(kThreads), tt(kThreads);
            for (int tid = 0; tid < kThreads; ++tid) {
              const int g = Map::group(tid), r = Map::row(tid, j);
              float mx = -INFINITY;
              for (int v = 0; v < kVec; ++v) {
                if (c0 + g * kVec + v < C) mx = fmaxf(mx, tile[r * kBlockC + g * kVec + v]);
              }
              m[tid] = mx;
            }
            butterfly(m, Map::kGroups, maxf);
            for (int tid = 0; tid < kThreads; ++tid) {
              const int g = Map::group(tid), r = Map::row(tid, j);
              float ss = 0.0f, st = 0.0f;
              for (int v = 0; v < kVec; ++v) {
                if (c0 + g * kVec + v < C) {
                  const float z = tile[r * kBlockC + g * kVec + v] - m[tid];
                  const float e = expf(z);
                  ss += e;
                  st += e * z;
                }
              }
              s[tid] = ss;
              tt[tid] = st;
            }
            butterfly(s, Map::kGroups, add);
            butterfly(tt, Map::kGroups, add);
            for (int tid = 0; tid < kThreads; ++tid) {
              const int g = Map::group(tid), r = Map::row(tid, j);
              const int64_t l = l0 + r;
              if (l >= L) continue;
              if (g == 0) {
                float* e = ent.data() + w * 3 * L;
                e[l] = m[tid];
                e[L + l] = s[tid];
                e[2 * L + l] = tt[tid];
              }
              for (int v = 0; v < kVec; ++v) {
                const int c = g * kVec + v;
                if (c0 + c < C) {
                  const float d = tile[r * kBlockC + c] - shift[c];
                  sa[tid * kVec + v] += d;
                  sb[tid * kVec + v] += d * d;
                }
              }
            }
          }
        }
        // step 3: the tensor-core operand and the MMA, in fp32 sums of the same rounded products
        for (int f = 0; f < nfrag; ++f) {
          const int rt = f / kColFrags, ct = f % kColFrags;
          for (int i = 0; i < kFrag; ++i) {
            const int64_t brow = row0 + rt * kFrag + i;
            for (int jc = 0; jc < kFrag; ++jc) {
              const int c = ct * kFrag + jc;
              float a = acc[(f * kFrag + i) * kFrag + jc];
              for (int r = 0; r < kTileL; ++r) {
                const int64_t l = l0 + r;
                const bool ok = l < L && c0 + c < C;
                const float bh = l < L ? b_hi[brow * L + l] : 0.0f;
                if (f32) {
                  const float d = ok ? tile[r * kBlockC + c] - shift[c] : 0.0f;
                  const float ah = tf32_rna(bh), al = tf32_rna(bh - ah);
                  const float xh = tf32_rna(d), xl = tf32_rna(d - xh);
                  a += al * xh + ah * xl + ah * xh;
                } else {
                  const float bl = l < L ? b_lo[brow * L + l] : 0.0f;
                  const float xv = ok ? tile[r * kBlockC + c] : 0.0f;
                  a += bl * xv + bh * xv;
                }
              }
              acc[(f * kFrag + i) * kFrag + jc] = a;
            }
          }
        }
      }
      if (pass == 0) {  // moments: lanes sharing a group (xor kGroups.. 16), then warps in order
        std::vector<float> ra(kWarps * kBlockC), rb(kWarps * kBlockC);
        for (int v = 0; v < kVec; ++v) {
          std::vector<float> va(kThreads), vb(kThreads);
          for (int tid = 0; tid < kThreads; ++tid) {
            va[tid] = sa[tid * kVec + v];
            vb[tid] = sb[tid * kVec + v];
          }
          for (int o = Map::kGroups; o < 32; o <<= 1) {
            std::vector<float> na(va), nb(vb);
            for (int tid = 0; tid < kThreads; ++tid) {
              na[tid] = va[tid] + va[tid ^ o];
              nb[tid] = vb[tid] + vb[tid ^ o];
            }
            va = na;
            vb = nb;
          }
          for (int tid = 0; tid < kThreads; ++tid) {
            if ((tid & 31) < Map::kGroups) {
              ra[(tid >> 5) * kBlockC + Map::group(tid) * kVec + v] = va[tid];
              rb[(tid >> 5) * kBlockC + Map::group(tid) * kVec + v] = vb[tid];
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
      if (nfrag > 0) {  // E_low: per lane 8 rows of one column, butterfly over the warp, warps in order
        std::vector<float> lane_e(kThreads, 0.0f);
        for (int tid = 0; tid < kThreads; ++tid) {
          const int lane = tid & 31, warp = tid >> 5, col = lane & 15, r_first = (lane >> 4) * 8;
          for (int j = 0; j < kMaxFragsPerWarp; ++j) {
            const int f = warp + j * kWarps;
            if (f >= nfrag) continue;
            const int rt = f / kColFrags, ct = f % kColFrags;
            const float cen = centre[ct * kFrag + col];
            for (int r = 0; r < 8; ++r) {
              const float v = acc[(f * kFrag + r_first + r) * kFrag + col] -
                              rowsum[row0 + rt * kFrag + r_first + r] * cen;
              lane_e[tid] += v * v;
            }
          }
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
      const float* e = ent.data() + smp * P.num_cb * 3 * L + l;
      EntState st = {e[0], e[L], e[2 * L]};
      for (int cb = 1; cb < P.num_cb; ++cb) {
        const float* q = e + static_cast<int64_t>(cb) * 3 * L;
        st = ent_merge(st, EntState{q[0], q[L], q[2 * L]});
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
//! block algorithm; the basis as floats (hi and lo halves of the input dtype, or fp32 in basis_hi).
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

//! The launch plan the kernel would use: num_cb, num_tiles, kp, pass_rows, num_pass, resident, basis_ld,
//! basis_cols, vec, smem_bytes (in this order), vec from the launcher's own alignment rule for address `addr`.
void aselect_emulate_plan(int64_t length, int64_t channels, int kp, int dtype, uint64_t addr, int64_t stride_n,
                          int64_t stride_l, int64_t stride_c, int* plan_out) {
  const int vec = vector_ok(static_cast<uintptr_t>(addr), dtype, channels, stride_n, stride_l, stride_c);
  const Plan p = make_plan(length, channels, kp, dtype, vec);
  const int values[10] = {p.num_cb, p.num_tiles, p.kp, p.pass_rows, p.num_pass, p.resident, p.basis_ld,
                          p.basis_cols, p.vec, p.smem_bytes};
  for (int i = 0; i < 10; ++i) plan_out[i] = values[i];
}
}
