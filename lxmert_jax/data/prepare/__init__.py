"""Offline preparation: reference TSV/JSON (or the built-in corpus) -> ArrayRecord datasets.

    python -m lxmert_jax.data.prepare all --root data --out DATA_DIR

Users' own `.npz` features and questions become a VQA-style dataset with
`prepare_npz_vqa` (`python -m lxmert_jax.data.prepare npz ...`).
"""

from lxmert_jax.data.prepare.custom_vqa import prepare_npz_vqa
from lxmert_jax.data.prepare.run import (TASKS, Inputs, Options, PrepareReport, main,
                                         prepare_all, prepare_task, summarize)

__all__ = ["TASKS", "Inputs", "Options", "PrepareReport", "main", "prepare_all", "prepare_npz_vqa",
           "prepare_task", "summarize"]
