"""A stand-in that hides an installed diffusers: with ``bench/no_diffusers`` first on ``PYTHONPATH``, ``import
diffusers`` (and every ``diffusers.*`` import) raises ImportError, as on a machine without the package.

``bench/run_all_gpu.sh --smoke --no-diffusers`` rehearses the benchmarks this way.
"""

raise ImportError("diffusers is hidden by bench/no_diffusers (a rehearsal without diffusers)")
