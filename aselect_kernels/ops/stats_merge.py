r"""Merging a sample's partial statistics into its six numbers (the last step of the fused kernel).

The main kernel (:mod:`~aselect_kernels.ops.stats_kernel`) leaves, for every work item ``(n, g)`` (sample ``n``,
channel group ``g``), four partial sums and one channel-entropy state ``(m, s, t)`` per token row:

* partials ``[N, G, 4]``: ``sum x``, ``sum_c M2_c``, ``sum_c L mu_c^2`` and the low non-DC energy ``E_low``;
* states ``[N, G, 3, L]``: ``m = max_c x``, ``s = sum_c e^{x-m}``, ``t = sum_c e^{x-m} (x-m)`` over the group's
  channels, so that the row's entropy is ``H = log s - t / s``.

:func:`merge_sample` adds the partials and merges the states in group order ``g = 0, 1, ...``: a fixed order, so
the result is bitwise reproducible and never depends on which program ran which work item.  Two log-sum-exp
states merge exactly (:func:`merge_lse`)::

    m' = max(m1, m2)     s' = sum_i e^{m_i - m'} s_i     t' = sum_i e^{m_i - m'} (t_i + (m_i - m') s_i)

It runs either inside the main kernel, in the program that finishes a sample's last work item, or in
:func:`combine_kernel`, one program per sample, launched after the main kernel (the two-launch variant, kept for
comparison on the GPU).  Loads use ``.cg`` (bypass L1): the partials were written by other programs.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def merge_lse(m1, s1, t1, m2, s2, t2):
    """Merge two row states ``(m, s, t)`` exactly (the formula above); ``m1``, ``m2`` must be finite."""
    mm = tl.maximum(m1, m2)
    d1 = m1 - mm
    d2 = m2 - mm
    alpha = tl.exp(d1)
    beta = tl.exp(d2)
    return mm, alpha * s1 + beta * s2, alpha * (t1 + d1 * s1) + beta * (t2 + d2 * s2)


@triton.jit
def merge_sample(n, part_ptr, ent_ptr, out_ptr, L, C, NUM_GROUPS, stride_on, stride_os, BLOCK_L: tl.constexpr):
    """Write the six statistics of sample ``n`` from its ``NUM_GROUPS`` partials and entropy states."""
    n = n.to(tl.int64)
    idx = tl.arange(0, 4)
    acc = tl.zeros([4], tl.float32)
    for g in range(NUM_GROUPS):
        acc += tl.load(part_ptr + (n * NUM_GROUPS + g) * 4 + idx, cache_modifier=".cg")
    sum_x = tl.sum(tl.where(idx == 0, acc, 0.0), axis=0)
    sum_m2 = tl.sum(tl.where(idx == 1, acc, 0.0), axis=0)
    sum_lmu2 = tl.sum(tl.where(idx == 2, acc, 0.0), axis=0)
    e_low = tl.sum(tl.where(idx == 3, acc, 0.0), axis=0)

    # Channel entropy: per token row, merge the group states in order, then average H over the rows.
    h_acc = tl.zeros([BLOCK_L], tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        l_ok = offs_l < L
        base = ent_ptr + n * NUM_GROUPS * 3 * L + offs_l
        m = tl.load(base, mask=l_ok, other=0.0, cache_modifier=".cg")
        s = tl.load(base + L, mask=l_ok, other=1.0, cache_modifier=".cg")
        t = tl.load(base + 2 * L, mask=l_ok, other=0.0, cache_modifier=".cg")
        for g in range(1, NUM_GROUPS):
            nxt = base + g * 3 * L
            m2 = tl.load(nxt, mask=l_ok, other=0.0, cache_modifier=".cg")
            s2 = tl.load(nxt + L, mask=l_ok, other=1.0, cache_modifier=".cg")
            t2 = tl.load(nxt + 2 * L, mask=l_ok, other=0.0, cache_modifier=".cg")
            m, s, t = merge_lse(m, s, t, m2, s2, t2)
        h_acc += tl.where(l_ok, tl.log(s) - t / s, 0.0)

    # Frequency ratios: E_high = L sum_c M2_c - E_low, the totals from Parseval (NaN on 0 / 0).
    lf = L * 1.0
    lc = lf * C
    e_high = tl.maximum(lf * sum_m2 - e_low, 0.0)
    e_total = lf * (sum_m2 + sum_lmu2)
    e_centred = lf * sum_m2
    hfr = tl.where(e_total > 0, e_high / tl.where(e_total > 0, e_total, 1.0), float("nan"))
    hfr_c = tl.where(e_centred > 0, e_high / tl.where(e_centred > 0, e_centred, 1.0), float("nan"))
    out = out_ptr + n * stride_on
    tl.store(out, sum_x / lc)
    tl.store(out + stride_os, (sum_m2 + sum_lmu2) / lc)
    tl.store(out + 2 * stride_os, sum_m2 / ((lf - 1.0) * C))
    tl.store(out + 3 * stride_os, tl.sum(h_acc, axis=0) / lf)
    tl.store(out + 4 * stride_os, hfr)
    tl.store(out + 5 * stride_os, hfr_c)


@triton.jit
def combine_kernel(part_ptr, ent_ptr, out_ptr, L, C, NUM_GROUPS, stride_on, stride_os, BLOCK_L: tl.constexpr):
    """Program ``n`` merges sample ``n`` (the two-launch variant of the kernel)."""
    merge_sample(tl.program_id(0), part_ptr, ent_ptr, out_ptr, L, C, NUM_GROUPS, stride_on, stride_os, BLOCK_L)
