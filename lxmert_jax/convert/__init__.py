"""Checkpoint conversion: Hugging Face and original snapshots, our checkpoint directories.

    python -m lxmert_jax.convert hf-to-jax HF_DIR OUT_DIR

`hf` converts transformers state dicts, `original` the original repository's
snapshots, `checkpoints` reads and writes our own directories and `cli` is the
command line.
"""

from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.convert.hf import (TIED_DECODER_KEY, WORD_EMBEDDING_KEY, from_pretrained_hf,
                                   hf_config_dict, hf_key, params_to_state_dict,
                                   read_hf_directory, save_pretrained_hf, state_dict_to_params)
from lxmert_jax.convert.original import from_original, infer_config, original_to_hf_state_dict
from lxmert_jax.convert.cli import main

__all__ = ["TIED_DECODER_KEY", "WORD_EMBEDDING_KEY", "ConversionError", "main", "from_original",
           "from_pretrained_hf", "hf_config_dict", "hf_key", "infer_config",
           "original_to_hf_state_dict", "params_to_state_dict", "read_hf_directory",
           "save_pretrained_hf", "state_dict_to_params"]
