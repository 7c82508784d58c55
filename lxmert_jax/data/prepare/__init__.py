"""Offline preparation: reference TSV/JSON (or the built-in corpus) -> ArrayRecord datasets.

    python -m lxmert_jax.data.prepare all --root data --out DATA_DIR
"""

from lxmert_jax.data.prepare.run import (TASKS, Inputs, Options, PrepareReport, main,
                                         prepare_all, prepare_task, summarize)

__all__ = ["TASKS", "Inputs", "Options", "PrepareReport", "main", "prepare_all", "prepare_task",
           "summarize"]
