"""The LXMERT model: config, layers, the three encoders, heads and task models."""

from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.encoders import LxmertModel
from lxmert_jax.model.task_models import (LxmertForNLVR2, LxmertForPreTraining,
                                          LxmertForQuestionAnswering)

__all__ = ["LxmertConfig", "LxmertModel", "LxmertForPreTraining", "LxmertForQuestionAnswering",
           "LxmertForNLVR2"]
