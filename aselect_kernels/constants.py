"""Names and defaults shared by the library and the command line, in one torch-free module.

The command line builds its parser from these before torch is imported, and the library takes its defaults from
the same objects, so the two cannot disagree.
"""

from __future__ import annotations

#: The built-in scorers, in registration order (:mod:`.scorers` registers one of each).
SCORERS = ("hfr", "hfr_centered", "token_var", "chan_entropy", "sf")
#: The scorer used when none is named: over the six validation benchmarks (clean, noisy and held-out), ``sf`` (max)
#: over the default preset had the smallest worst and mean gap to the grid's best cell (docs/VALIDATION.md).
DEFAULT_SCORER = "sf"
#: The few-label criteria (:mod:`.fewlabel`); the first selects when labels are given and no scorer is named.
LABEL_CRITERIA = ("ridge_loo", "ncm_loo")
#: Statistics backends of :func:`~aselect_kernels.stats.compute_stats`.
BACKENDS = ("auto", "triton", "cuda", "matmul", "torch")
#: The tap preset used when none is named: on the embedded model the MLP's hidden activations held the best cell of
#: the whole grid on every validation dataset, clean, noisy and held out (docs/VALIDATION.md).
DEFAULT_TAPS = "mlp_hidden"
#: Named recipes of :mod:`.recipes`: a published method's settings in one word.
RECIPE_NAMES = ("aselect", "aselect-nyquist")
#: The selection options a recipe sets, with the defaults they take without one.
RECIPE_OPTIONS = {"taps": DEFAULT_TAPS, "scorer": DEFAULT_SCORER, "noise": "ddpm", "cutoff": 0.15, "hfr_dims": 1}
#: Default validation grid: every 50 steps, plus t = 10 and 25, where a well-trained DiT's probe accuracy can peak.
VALIDATION_TIMESTEPS = "0,10,25,50:1000:50"
#: Grid of the noisy benchmarks: finer around t = 100, coarser above 300 (9 timesteps, for run time).
NOISE_TIMESTEPS = "0,25,50,100,150,200,300,500,900"
#: The offline datasets of :func:`~aselect_kernels.validation.datasets.load_dataset`.
DATASETS = ("fashion", "digits", "mnist", "fashion_noise", "digits_noise", "mnist_noise", "fashion_blur")
#: The datasets with a nuisance: the noisy benchmarks' grid (:data:`NOISE_TIMESTEPS`) and sizes, no dense task.
PERTURBED_DATASETS = ("fashion_noise", "digits_noise", "mnist_noise", "fashion_blur")
#: Share of each class held out for testing when no separate test set is given.
DEFAULT_TEST_FRACTION = 0.2
#: Array layouts the image loaders take (``"auto"`` decides only where the shape leaves no doubt).
LAYOUTS = ("auto", "NCHW", "NHWC", "NHW")
