"""Kernels: the fused Triton statistics kernel (``fused_stats``) and the ``aselect::sample_stats`` custom op."""
