"""Kernels: the fused Triton statistics kernel (``fused_stats``), its PyTorch twin for the CPU (``matmul_stats``)
and the ``aselect::sample_stats`` custom op."""
