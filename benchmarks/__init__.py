"""Benchmarks of lxmert_jax against transformers' PyTorch LXMERT.

PyTorch and JAX may share the device in one process (the correctness checks
always do); JAX would otherwise reserve 75% of GPU memory as soon as it
starts, so growth-on-demand is the default here unless the caller chose.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
