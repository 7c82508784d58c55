"""Using trained models: loading any saved LXMERT and answering questions with it.

`Predictor` (and `PredictionError`) are imported on first use: the predictor
needs the data package's tokenizers, and the checkpoint converters and the
trainer, which import `saved_models` from here, should not pay for loading it.
"""

from typing import Any

__all__ = ["PredictionError", "Predictor"]


def __getattr__(name: str) -> Any:
  if name in __all__:
    from lxmert_jax.inference import predictor  # pylint: disable=import-outside-toplevel
    return getattr(predictor, name)
  raise AttributeError(f"module 'lxmert_jax.inference' has no attribute {name!r}")
