"""The command of docs/VALIDATION.md: runs :mod:`aselect_kernels.validation.confirm` (see its docstring)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("aselect_kernels.validation.confirm", run_name="__main__", alter_sys=True)
