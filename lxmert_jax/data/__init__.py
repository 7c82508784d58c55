"""LXMERT data: reference TSV/JSON -> ArrayRecord datasets -> grain batches.

Preparing (once; streams the feature TSVs row by row):

    python -m lxmert_jax.data.prepare all --root data --out DATA_DIR

Loading:

    loader = make_pretrain_loader(DATA_DIR, "mscoco_train+mscoco_nominival+vgnococo",
                                  batch_size=256, seed=9595)
    info = dataset_info(DATA_DIR)      # label-space sizes, feature width, counts
    for batch in loader: ...           # dict of numpy arrays (pretrain_pipeline)

A synthetic corpus in the reference formats, prepared in one call:

    build_demo_data("/tmp/lxmert_demo", num_images=200, seed=0)

DATA_DIR layout (see `layout` for the reference input layout):

    DATA_DIR/lxmert_features/<set>/1.0.0/  images of one TSV (train2014, val2014,
                                           vg_gqa, gqa_testdev, nlvr2_*, ...)
    DATA_DIR/lxmert_pretrain/1.0.0/        mscoco_train, mscoco_nominival,
                                           vgnococo, mscoco_minival
    DATA_DIR/lxmert_vqa/1.0.0/             train, nominival, minival[, test]
    DATA_DIR/lxmert_gqa/1.0.0/             train, valid, testdev[, submit]
    DATA_DIR/lxmert_nlvr2/1.0.0/           train, valid, test
    DATA_DIR/corpus/, demo_data.json       (demo data only)
"""

from lxmert_jax.data.prepare.annotations import AnswerTable, convert_ans
from lxmert_jax.data.pipeline.downstream import make_downstream_loader, num_answers
from lxmert_jax.data.errors import DataError, SkipLog
from lxmert_jax.data.prepare import Inputs, Options, prepare_all, prepare_task
from lxmert_jax.data.pipeline.pretrain import make_pretrain_loader
from lxmert_jax.data.store import dataset_info
from lxmert_jax.data.prepare.synthetic_corpus import build_demo_data, build_synthetic_corpus
from lxmert_jax.data.tokenization import (SentencePieceTokenizer, Tokenizer, WordPieceTokenizer,
                                          make_tokenizer, train_sentencepiece)

__all__ = [
    "AnswerTable", "DataError", "Inputs", "Options", "SentencePieceTokenizer", "SkipLog",
    "Tokenizer", "WordPieceTokenizer", "build_demo_data", "build_synthetic_corpus",
    "convert_ans", "dataset_info", "make_downstream_loader",
    "make_pretrain_loader", "make_tokenizer", "num_answers", "prepare_task",
    "prepare_all", "train_sentencepiece",
]
