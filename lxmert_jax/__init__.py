"""lxmert_jax: LXMERT (Tan & Bansal, 2019) in JAX/Flax.

    model, params = lxmert_jax.from_pretrained_hf("path/to/hf_dir")
    out = model.apply({"params": params}, input_ids=..., visual_feats=...,
                      visual_pos=..., deterministic=True)
"""

from lxmert_jax.convert.checkpoints import load_model, save_model
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.convert import from_original, from_pretrained_hf, save_pretrained_hf
from lxmert_jax.model.task_models import LxmertForNLVR2, LxmertForPreTraining, LxmertForQuestionAnswering
from lxmert_jax.model.encoders import LxmertModel
from lxmert_jax.model.outputs import (LxmertForNLVR2Output, LxmertForPreTrainingOutput,
                                LxmertForQuestionAnsweringOutput, LxmertModelOutput)

__version__ = "0.1.0"

__all__ = [
    "LxmertConfig", "LxmertModel", "LxmertForPreTraining", "LxmertForQuestionAnswering",
    "LxmertForNLVR2", "LxmertModelOutput", "LxmertForPreTrainingOutput",
    "LxmertForQuestionAnsweringOutput", "LxmertForNLVR2Output", "from_pretrained_hf",
    "save_pretrained_hf", "from_original", "load_model", "save_model",
]
