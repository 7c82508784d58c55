"""Checkpoint conversion: Hugging Face and original snapshots, our checkpoint directories.

    python -m lxmert_jax.convert hf-to-jax HF_DIR OUT_DIR
"""

from lxmert_jax.convert.hf import (TIED_DECODER_KEY, WORD_EMBEDDING_KEY, ConversionError, from_original, from_pretrained_hf,
                                   hf_config_dict, hf_key, infer_config,
                                   original_to_hf_state_dict, params_to_state_dict,
                                   read_hf_directory, save_pretrained_hf, state_dict_to_params)
from lxmert_jax.convert.hf import main

__all__ = ["TIED_DECODER_KEY", "WORD_EMBEDDING_KEY", "ConversionError", "main", "from_original", "from_pretrained_hf", "hf_config_dict", "hf_key",
           "infer_config", "original_to_hf_state_dict", "params_to_state_dict",
           "read_hf_directory", "save_pretrained_hf", "state_dict_to_params"]
