r"""The main Triton kernel of the fused statistics: one read of ``X [N, L, C]``, partial sums per work item.

The definition of record is :func:`aselect_kernels.reference.reference_stats`; the launcher, the tiling and the
overall plan are in :mod:`~aselect_kernels.ops.fused_stats`.  This file is the kernel, step by step.

**Step 0 - work items and the grid.**  A work item ``(n, g)`` is sample ``n`` and channel group ``g``: the
``GROUP_C`` consecutive channel blocks ``cb = g GROUP_C, ...`` of ``BLOCK_C`` channels each.  Tokens are never
split across work items: the low-frequency projection (*Step 3*) must be squared after it is summed over all
tokens.  The grid is persistent: program ``p`` of ``P`` walks the items ``p, p + P, p + 2P, ...``.  An item's
arithmetic never depends on which program runs it, nor on ``P`` or ``N``, so results are batch-invariant.

*Indexing.*  ``X`` may be any strided view, and a view of a large tensor (a permuted ``[1024, 4096, 3072]``) has
element offsets past 2^31.  Sample, channel-block and token-tile starts are therefore 64-bit pointers; the offsets
inside one tile are 32-bit (cheaper) unless a tile itself spans 2^31 elements (``WIDE_INDEX``, decided by the
launcher from the strides).

*Full and ragged tiles.*  A tile that lies inside ``X`` needs no mask: the launcher passes ``EVEN_L`` (``BLOCK_L``
divides ``L``) and ``EVEN_C`` (``BLOCK_C`` divides ``C``), and full tiles are then loaded, reduced and stored
without a single ``tl.where`` (each one costs a select per element).  With a ragged token axis the loop walks the
full tiles mask-free and a last, masked tile takes the remainder; a ragged channel axis keeps the channel mask.

**Step 1 - moments with a shift**, per channel, ``k_c = x[n, 0, c]``::

    a_c = sum_l (x_lc - k_c)     b_c = sum_l (x_lc - k_c)^2     mu_c = k_c + a_c / L     M2_c = b_c - a_c^2 / L

Shifting by a sample of the channel keeps ``M2_c`` accurate when the mean dwarfs the spread.

**Step 1b - channel means (optional).**  With ``WRITE_MEANS`` each channel block also stores its ``mu_c`` into
row ``n`` of the ``[N, C]`` means buffer (:func:`~aselect_kernels.reference.channel_means`): the value is already
in registers, so the means cost ``4 C`` bytes of writes per sample and no second read of ``X``.  Without the flag
the store is compiled out.

**Step 2 - channel entropy.**  Per token row, the log-sum-exp state ``(m, s, t)`` of the row's channels in the
block (:mod:`~aselect_kernels.ops.stats_merge`).  With one tile per channel block (``ONE_TILE``: ``BLOCK_L >= L``)
the states of a whole row stay in registers while the program walks its group's channel blocks, merged exactly,
and only the group's state is written: ``3 L`` floats per work item.  Otherwise (long token axes) each token tile
writes its block's states, and a group is one channel block.

**Step 3 - the low-frequency energy on tensor cores.**  ``proj [BLOCK_K, BLOCK_C] += B [rows, tile] @ x_tile``
with the real basis ``B [K, L]`` of :func:`~aselect_kernels.frequency.low_frequency_basis`, zero-padded to a
multiple of ``BLOCK_K`` rows.  Per channel, ``E_low = sum_rows (proj - rowsum(B) (mu - shift))^2``: the exact
leak of the rounded basis (whose rows do not sum to exactly 0) is removed.  With ``ONE_TILE`` and
``HOIST_BASIS`` the first block of basis rows is loaded once per program, before the work-item loop, and stays on
chip; further row blocks reuse the tile that is already in registers.  Without ``ONE_TILE``, further row blocks
re-read the item's tiles (from L2).

*Operands.*  bf16/fp16 inputs are exact in their dtype and are fed raw against ``B = B_hi + B_lo`` split into two
halves of the input dtype: two tensor-core dots, fp32 accumulation (``SPLIT_BASIS``).  fp32 inputs are fed as
``x - k_c`` against an fp32 ``B`` with ``FP32_DOT`` precision: ``"tf32x3"`` (three TF32 dots on split operands,
NVIDIA only; its rounding uses under 1 % of the fp32 tolerance, ``bench/tf32x3_error.py``) or ``"ieee"`` (fp32
FMAs).  The interpreter computes half-precision dots wrongly, so there (``UPCAST_DOT``) the same operands are
upcast to fp32 first.

**Step 4 - partials and the merge.**  Each item writes ``sum x``, ``sum M2``, ``sum L mu^2``, ``E_low`` and its
entropy states.  With ``MERGE_IN_KERNEL``, it then takes a ticket from its sample's counter (an atomic add, after
a barrier so every thread's stores are ordered before it); the item that draws the last ticket merges the sample
in fixed group order (:func:`~aselect_kernels.ops.stats_merge.merge_sample`).  Deterministic: no float atomics,
and the merge order does not depend on which item finished last.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .stats_merge import merge_lse, merge_sample


@triton.jit
def _load_tile(x_block, l0, offs_l0, offs_cb, c_ok, L, stride_xl, stride_xc, WIDE_INDEX: tl.constexpr,
               MASKED: tl.constexpr):
    """Tile ``[BLOCK_L, BLOCK_C]`` of one sample starting at token ``l0``, with its masks.

    ``x_block`` points at token 0 of the channel block; ``offs_cb`` are the channels relative to the block.  The
    tile's start is a 64-bit pointer; offsets inside the tile are 32-bit unless the launcher found that a tile can
    span 2^31 elements (``WIDE_INDEX``).  A ``MASKED`` tile reads zeros outside ``X``; a full tile (every token
    and channel inside ``X``) is read without a mask, and its masks are all true."""
    offs_l = l0 + offs_l0
    l_ok = offs_l < L
    mask = l_ok[:, None] & c_ok[None, :]
    x_tile = x_block + tl.cast(l0, tl.int64) * stride_xl
    if WIDE_INDEX:
        rel = offs_l0.to(tl.int64)[:, None] * stride_xl + offs_cb.to(tl.int64)[None, :] * stride_xc
    else:
        rel = offs_l0[:, None] * stride_xl + offs_cb[None, :] * stride_xc
    if MASKED:
        xt = tl.load(x_tile + rel, mask=mask, other=0.0)
    else:
        xt = tl.load(x_tile + rel)
    return xt, offs_l, l_ok, mask


@triton.jit
def _load_basis(basis_ptr, rows, offs_l, l_ok, stride_b, MASKED: tl.constexpr):
    """Basis rows ``rows`` over the tokens ``offs_l`` (zeros on padded tokens); rows are ``stride_b`` apart.  An
    unmasked read needs every token inside the basis rows (padded to a multiple of 16 tokens)."""
    if MASKED:
        return tl.load(basis_ptr + rows[:, None] * stride_b + offs_l[None, :], mask=l_ok[None, :], other=0.0)
    return tl.load(basis_ptr + rows[:, None] * stride_b + offs_l[None, :])


@triton.jit
def _exp(z):
    """``e^z`` as ``2^(z log2 e)``: one multiply and one ``MUFU.EX2`` per element.  ``tl.exp`` lowers to the same
    pair wrapped in ptxas's denormal range fix-up of ``ex2.approx.f32`` (a compare and two predicated multiplies:
    three more instructions per element); ``tl.exp2`` lowers to ``ex2.approx.ftz.f32``, the bare ``MUFU.EX2``.
    ``z = x - m <= 0`` is exact, so only results below 2^-126 differ (flushed to 0), far below the row's largest
    term, 1."""
    return tl.exp2(z * 1.4426950408889634)


@triton.jit
def _row_state(xf, mask, l_ok, MASKED: tl.constexpr):
    """Log-sum-exp state ``(m, s, t)`` of each token row over the tile's channels (padded rows: ``(0, 0, 0)``).
    A full tile needs no mask: per element a subtraction, a multiply and ``MUFU.EX2`` (:func:`_exp`), two sums."""
    if MASKED:
        m = tl.where(l_ok, tl.max(tl.where(mask, xf, float("-inf")), axis=1), 0.0)
        z = tl.where(mask, xf - m[:, None], 0.0)
        e = tl.where(mask, _exp(z), 0.0)
    else:
        m = tl.max(xf, axis=1)
        z = xf - m[:, None]
        e = _exp(z)
    return m, tl.sum(e, axis=1), tl.sum(e * z, axis=1)


@triton.jit
def _moments(xf, shift, mask, MASKED: tl.constexpr):
    """The tile's shifted operand ``d = x - k`` (zero outside ``X``) and its column sums of ``d`` and ``d^2``."""
    if MASKED:
        d = tl.where(mask, xf - shift[None, :], 0.0)
    else:
        d = xf - shift[None, :]
    return d, tl.sum(d, axis=0), tl.sum(d * d, axis=0)


@triton.jit
def _project(proj, b_hi, b_lo, xt, d, SPLIT_BASIS: tl.constexpr, UPCAST_DOT: tl.constexpr,
             FP32_DOT: tl.constexpr):
    """``proj += B @ operand`` in fp32: the raw tile against ``B_hi + B_lo``, or ``d = x - k`` against ``B``."""
    if SPLIT_BASIS:
        if UPCAST_DOT:
            op32 = xt.to(tl.float32)
            proj = tl.dot(b_hi.to(tl.float32), op32, acc=proj, input_precision="ieee")
            proj = tl.dot(b_lo.to(tl.float32), op32, acc=proj, input_precision="ieee")
        else:
            proj = tl.dot(b_hi, xt, acc=proj)
            proj = tl.dot(b_lo, xt, acc=proj)
    else:
        proj = tl.dot(b_hi, d, acc=proj, input_precision=FP32_DOT)
    return proj


@triton.jit
def _low_energy(proj, rowsum_ptr, rows, centre):
    """Per-channel ``sum_rows (B_r (x - mu))^2`` from ``proj = B_r (x - shift)`` and ``centre = mu - shift``."""
    rs = tl.load(rowsum_ptr + rows)
    r = proj - rs[:, None] * centre[None, :]
    return tl.sum(r * r, axis=0)


@triton.jit
def _token_tile(
    x_block, l0, offs_l0, offs_cb, offs_k, c_ok, shift, a, b, proj, ent_item, basis_hi_ptr, basis_lo_ptr,
    L, stride_xl, stride_xc, stride_b, HAS_LOW: tl.constexpr, SPLIT_BASIS: tl.constexpr, UPCAST_DOT: tl.constexpr,
    FP32_DOT: tl.constexpr, WIDE_INDEX: tl.constexpr, MASKED: tl.constexpr,
):
    """One token tile of a long token axis: the moments ``a, b`` and the projection ``proj`` grow by the tile,
    and the tile's row states are written (``MASKED``: the tile reaches past ``X``)."""
    xt, offs_l, l_ok, mask = _load_tile(x_block, l0, offs_l0, offs_cb, c_ok, L, stride_xl, stride_xc, WIDE_INDEX,
                                        MASKED)
    xf = xt.to(tl.float32)
    d, da, db = _moments(xf, shift, mask, MASKED)
    a += da
    b += db
    tm, ts, tt = _row_state(xf, mask, l_ok, MASKED)
    if MASKED:
        tl.store(ent_item + offs_l, tm, mask=l_ok)
        tl.store(ent_item + L + offs_l, ts, mask=l_ok)
        tl.store(ent_item + 2 * L + offs_l, tt, mask=l_ok)
    else:
        tl.store(ent_item + offs_l, tm)
        tl.store(ent_item + L + offs_l, ts)
        tl.store(ent_item + 2 * L + offs_l, tt)
    if HAS_LOW:
        b_hi = _load_basis(basis_hi_ptr, offs_k, offs_l, l_ok, stride_b, MASKED)
        b_lo = b_hi
        if SPLIT_BASIS:
            b_lo = _load_basis(basis_lo_ptr, offs_k, offs_l, l_ok, stride_b, MASKED)
        proj = _project(proj, b_hi, b_lo, xt, d, SPLIT_BASIS, UPCAST_DOT, FP32_DOT)
    return a, b, proj


@triton.jit
def _channel_block(
    x_base, cb, b_hi0, b_lo0, basis_hi_ptr, basis_lo_ptr, rowsum_ptr, ent_item, means_base,
    L, C, NUM_KB, stride_xl, stride_xc, stride_b,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
    HAS_LOW: tl.constexpr, SPLIT_BASIS: tl.constexpr, UPCAST_DOT: tl.constexpr, FP32_DOT: tl.constexpr,
    NUM_STAGES: tl.constexpr, HOIST_BASIS: tl.constexpr, WRITE_MEANS: tl.constexpr, WIDE_INDEX: tl.constexpr,
    EVEN_L: tl.constexpr, EVEN_C: tl.constexpr,
):
    """Steps 1-3 for channel block ``cb`` of one sample: its 4 partial sums and (``ONE_TILE``) its row states;
    with ``WRITE_MEANS`` its channel means go to ``means_base`` (the sample's row of the means buffer).
    ``EVEN_L`` / ``EVEN_C``: ``BLOCK_L`` divides ``L`` / ``BLOCK_C`` divides ``C``, so full tiles take the
    mask-free path."""
    offs_cb = tl.arange(0, BLOCK_C)
    offs_c = cb * BLOCK_C + offs_cb
    c_ok = offs_c < C
    offs_l0 = tl.arange(0, BLOCK_L)
    offs_k = tl.arange(0, BLOCK_K)
    x_block = x_base + tl.cast(cb * BLOCK_C, tl.int64) * stride_xc  # 64-bit: token 0 of the channel block
    if WIDE_INDEX:
        shift_ptrs = x_block + offs_cb.to(tl.int64) * stride_xc
    else:
        shift_ptrs = x_block + offs_cb * stride_xc
    if EVEN_C:
        shift = tl.load(shift_ptrs).to(tl.float32)
    else:
        shift = tl.load(shift_ptrs, mask=c_ok, other=0.0).to(tl.float32)
    proj = tl.zeros([BLOCK_K, BLOCK_C], tl.float32)
    if ONE_TILE:
        # Every token in one tile: the moments, the row states and the first projection come from registers.
        MASKED: tl.constexpr = not (EVEN_L and EVEN_C)
        xt, offs_l, l_ok, mask = _load_tile(x_block, 0, offs_l0, offs_cb, c_ok, L, stride_xl, stride_xc, WIDE_INDEX,
                                            MASKED)
        xf = xt.to(tl.float32)
        d, a, b = _moments(xf, shift, mask, MASKED)
        m, s, t = _row_state(xf, mask, l_ok, MASKED)
        if HAS_LOW:
            if HOIST_BASIS:
                proj = _project(proj, b_hi0, b_lo0, xt, d, SPLIT_BASIS, UPCAST_DOT, FP32_DOT)
            else:
                b_hi = _load_basis(basis_hi_ptr, offs_k, offs_l, l_ok, stride_b, True)
                b_lo = b_hi
                if SPLIT_BASIS:
                    b_lo = _load_basis(basis_lo_ptr, offs_k, offs_l, l_ok, stride_b, True)
                proj = _project(proj, b_hi, b_lo, xt, d, SPLIT_BASIS, UPCAST_DOT, FP32_DOT)
    else:
        # Token tiles, software-pipelined; each tile writes its rows' states (a group is one channel block here).
        # The full tiles come first and carry no token mask; a ragged last tile takes the masked path.
        a = tl.zeros([BLOCK_C], tl.float32)
        b = tl.zeros([BLOCK_C], tl.float32)
        if EVEN_L:
            l_full = L
        else:
            l_full = L - L % BLOCK_L
        for l0 in tl.range(0, l_full, BLOCK_L, num_stages=NUM_STAGES):
            a, b, proj = _token_tile(x_block, l0, offs_l0, offs_cb, offs_k, c_ok, shift, a, b, proj, ent_item,
                                     basis_hi_ptr, basis_lo_ptr, L, stride_xl, stride_xc, stride_b, HAS_LOW,
                                     SPLIT_BASIS, UPCAST_DOT, FP32_DOT, WIDE_INDEX, not EVEN_C)
        if not EVEN_L:
            a, b, proj = _token_tile(x_block, l_full, offs_l0, offs_cb, offs_k, c_ok, shift, a, b, proj, ent_item,
                                     basis_hi_ptr, basis_lo_ptr, L, stride_xl, stride_xc, stride_b, HAS_LOW,
                                     SPLIT_BASIS, UPCAST_DOT, FP32_DOT, WIDE_INDEX, True)
        m = tl.zeros([BLOCK_L], tl.float32)  # unused: the states are already written
        s = m
        t = m

    mu_off = a / L  # mu_c - k_c
    m2 = tl.where(c_ok, b - a * mu_off, 0.0)
    mu = shift + mu_off
    if WRITE_MEANS:
        tl.store(means_base + offs_c, mu, mask=c_ok)
    e_low = tl.sum(tl.zeros([BLOCK_C], tl.float32), axis=0)
    if HAS_LOW:
        # The operand was x (split basis) or x - k (fp32): remove the matching mean leak.
        if SPLIT_BASIS:
            centre = mu
        else:
            centre = mu_off
        e_low += tl.sum(_low_energy(proj, rowsum_ptr, offs_k, centre), axis=0)
        for kb in range(1, NUM_KB):  # further basis row blocks
            rows = kb * BLOCK_K + offs_k
            proj = tl.zeros([BLOCK_K, BLOCK_C], tl.float32)
            if ONE_TILE:  # the tile is still in registers
                b_hi = _load_basis(basis_hi_ptr, rows, offs_l, l_ok, stride_b, True)
                b_lo = b_hi
                if SPLIT_BASIS:
                    b_lo = _load_basis(basis_lo_ptr, rows, offs_l, l_ok, stride_b, True)
                proj = _project(proj, b_hi, b_lo, xt, d, SPLIT_BASIS, UPCAST_DOT, FP32_DOT)
            else:  # re-read the item's tiles
                for l0 in range(0, L, BLOCK_L):
                    xt, offs_l, l_ok, mask = _load_tile(x_block, l0, offs_l0, offs_cb, c_ok, L, stride_xl,
                                                        stride_xc, WIDE_INDEX, True)
                    d = tl.where(mask, xt.to(tl.float32) - shift[None, :], 0.0)
                    b_hi = _load_basis(basis_hi_ptr, rows, offs_l, l_ok, stride_b, True)
                    b_lo = b_hi
                    if SPLIT_BASIS:
                        b_lo = _load_basis(basis_lo_ptr, rows, offs_l, l_ok, stride_b, True)
                    proj = _project(proj, b_hi, b_lo, xt, d, SPLIT_BASIS, UPCAST_DOT, FP32_DOT)
            e_low += tl.sum(_low_energy(proj, rowsum_ptr, rows, centre), axis=0)

    sum_x = tl.sum(L * shift + a, axis=0)
    sum_m2 = tl.sum(m2, axis=0)
    sum_lmu2 = tl.sum(L * mu * mu, axis=0)  # zero on padded channels: mu = 0
    return sum_x, sum_m2, sum_lmu2, e_low, m, s, t


@triton.jit
def fused_sample_stats_kernel(
    x_ptr, basis_hi_ptr, basis_lo_ptr, rowsum_ptr, part_ptr, ent_ptr, ticket_ptr, out_ptr, means_ptr,
    N, L, C, NUM_CB, NUM_GROUPS, NUM_KB, stride_xn, stride_xl, stride_xc, stride_b, stride_on, stride_os,
    stride_mn,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_C: tl.constexpr,
    ONE_TILE: tl.constexpr, HAS_LOW: tl.constexpr, SPLIT_BASIS: tl.constexpr, UPCAST_DOT: tl.constexpr,
    FP32_DOT: tl.constexpr, NUM_STAGES: tl.constexpr, HOIST_BASIS: tl.constexpr, MERGE_IN_KERNEL: tl.constexpr,
    MERGE_BLOCK_L: tl.constexpr, WRITE_MEANS: tl.constexpr, WIDE_INDEX: tl.constexpr,
    EVEN_L: tl.constexpr, EVEN_C: tl.constexpr,
):
    """Persistent program: walks the work items ``(n, g)`` (module docstring, steps 0-4).  ``means_ptr`` is the
    fp32 ``[N, C]`` means buffer (unit channel stride, rows ``stride_mn`` apart), written only with
    ``WRITE_MEANS``."""
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    offs_l0 = tl.arange(0, BLOCK_L)
    l_ok0 = offs_l0 < L
    if ONE_TILE and HAS_LOW and HOIST_BASIS:
        # The first block of basis rows over every token: loaded once per program, kept on chip for all items.
        offs_k = tl.arange(0, BLOCK_K)
        b_hi0 = _load_basis(basis_hi_ptr, offs_k, offs_l0, l_ok0, stride_b, True)
        b_lo0 = b_hi0
        if SPLIT_BASIS:
            b_lo0 = _load_basis(basis_lo_ptr, offs_k, offs_l0, l_ok0, stride_b, True)
    else:
        b_hi0 = 0.0  # unused
        b_lo0 = 0.0

    item = pid.to(tl.int64)  # this item's row in the partial buffers: n * NUM_GROUPS + g
    for _ in range(pid, N * NUM_GROUPS, num_programs):
        n = item // NUM_GROUPS
        g = item - n * NUM_GROUPS
        x_base = x_ptr + n * stride_xn
        ent_item = ent_ptr + item * 3 * L
        means_base = means_ptr + n * stride_mn
        cb0 = g * GROUP_C
        sum_x, sum_m2, sum_lmu2, e_low, m, s, t = _channel_block(
            x_base, cb0, b_hi0, b_lo0, basis_hi_ptr, basis_lo_ptr, rowsum_ptr, ent_item, means_base, L, C,
            NUM_KB, stride_xl, stride_xc, stride_b, BLOCK_L, BLOCK_C, BLOCK_K, ONE_TILE, HAS_LOW, SPLIT_BASIS,
            UPCAST_DOT, FP32_DOT, NUM_STAGES, HOIST_BASIS, WRITE_MEANS, WIDE_INDEX, EVEN_L, EVEN_C)
        if ONE_TILE:
            # The group's further channel blocks, merged into the running sums and row states in order.
            for cb in tl.range(cb0 + 1, tl.minimum(cb0 + GROUP_C, NUM_CB), num_stages=NUM_STAGES):
                px, pm2, plmu2, pe, m2, s2, t2 = _channel_block(
                    x_base, cb, b_hi0, b_lo0, basis_hi_ptr, basis_lo_ptr, rowsum_ptr, ent_item, means_base, L,
                    C, NUM_KB, stride_xl, stride_xc, stride_b, BLOCK_L, BLOCK_C, BLOCK_K, ONE_TILE, HAS_LOW,
                    SPLIT_BASIS, UPCAST_DOT, FP32_DOT, NUM_STAGES, HOIST_BASIS, WRITE_MEANS, WIDE_INDEX, EVEN_L,
                    EVEN_C)
                sum_x += px
                sum_m2 += pm2
                sum_lmu2 += plmu2
                e_low += pe
                m, s, t = merge_lse(m, s, t, m2, s2, t2)
            tl.store(ent_item + offs_l0, m, mask=l_ok0)
            tl.store(ent_item + L + offs_l0, s, mask=l_ok0)
            tl.store(ent_item + 2 * L + offs_l0, t, mask=l_ok0)

        part = part_ptr + item * 4
        tl.store(part + 0, sum_x)
        tl.store(part + 1, sum_m2)
        tl.store(part + 2, sum_lmu2)
        tl.store(part + 3, e_low)
        if MERGE_IN_KERNEL:
            tl.debug_barrier()  # every thread's stores happen before the ticket (release, GPU scope)
            ticket = tl.atomic_add(ticket_ptr + n, 1, sem="acq_rel", scope="gpu")
            if ticket == NUM_GROUPS - 1:  # the sample's last item: all its partials are written
                merge_sample(n, part_ptr, ent_ptr, out_ptr, L, C, NUM_GROUPS, stride_on, stride_os, MERGE_BLOCK_L)
        item += num_programs
