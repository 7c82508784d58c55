"""Tokenizers: BERT-uncased WordPiece (the reference) and SentencePiece.

Both expose the same small interface (`Tokenizer`): word-piece ids of a
sentence without special tokens, the special ids, and `encode`, which frames a
sentence exactly as the reference does: `.strip()`, tokenise, keep the first
T-2 pieces, `[CLS] ... [SEP]`, right-pad with [PAD] to T.

The WordPiece tokenizer is the `tokenizers` library's BERT pipeline (BERT
normaliser with lower-casing and accent stripping, BERT pre-tokeniser, WordPiece
with `[UNK]` and 100-character words), which yields the same ids as the
reference's Python `BertTokenizer` for the shipped 30,522-entry vocab.

SentencePiece is for pre-training from scratch on a new vocabulary. Train one
with

    python -m lxmert_jax.data.tokenization train-spm --input corpus.txt \
        --vocab-size 8000 --out /tmp/spm/lxmert

(`--input` may also be a pre-training/VQA/GQA/NLVR2 JSON file). Its ids are
[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
"""

from __future__ import annotations

import abc
import argparse
import hashlib
import importlib.resources
import json
import os
import pathlib
import sys
import tempfile
from typing import Iterable, Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def default_vocab_path() -> str:
  """Path of the bert-base-uncased vocab shipped with the package."""
  res = importlib.resources.files("lxmert_jax") / "assets" / "bert-base-uncased-vocab.txt"
  return str(res)


def _file_fingerprint(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()[:16]


def frame_ids(pieces: Sequence[int], max_length: int, cls_id: int, sep_id: int,
              pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """`[CLS] pieces[:T-2] [SEP]` right-padded to T.

  Args:
    pieces: word-piece ids without special tokens.
    max_length: T.
    cls_id, sep_id, pad_id: special ids.

  Returns:
    `(input_ids, attention_mask)`, both int32 [T].
  """
  body = np.asarray(pieces[:max_length - 2], dtype=np.int32)
  n = body.shape[0] + 2
  ids = np.full((max_length,), pad_id, dtype=np.int32)
  ids[0] = cls_id
  ids[1:n - 1] = body
  ids[n - 1] = sep_id
  mask = np.zeros((max_length,), dtype=np.int32)
  mask[:n] = 1
  return ids, mask


class Tokenizer(abc.ABC):
  """The interface the data pipelines rely on."""

  kind: str
  path: str

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids; random replacement tokens are drawn from [0, this)."""

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int | None:
    """Id of a vocabulary entry, None if absent."""

  @abc.abstractmethod
  def id_to_token(self, token_id: int) -> str:
    """Vocabulary entry of an id."""

  @abc.abstractmethod
  def tokenize_ids(self, texts: Sequence[str]) -> list[list[int]]:
    """Word-piece ids of each stripped text, without special tokens."""

  @property
  def pad_id(self) -> int:
    return self._special("[PAD]")

  @property
  def unk_id(self) -> int:
    return self._special("[UNK]")

  @property
  def cls_id(self) -> int:
    return self._special("[CLS]")

  @property
  def sep_id(self) -> int:
    return self._special("[SEP]")

  @property
  def mask_id(self) -> int:
    return self._special("[MASK]")

  def _special(self, token: str) -> int:
    token_id = self.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{self.path}: the vocabulary has no {token} entry")
    return token_id

  @property
  def fingerprint(self) -> str:
    """Identifies the vocabulary, so cached token ids can be trusted."""
    return f"{self.kind}:{_file_fingerprint(self.path)}"

  def spec(self) -> dict:
    """What a prepared dataset records about the tokenizer it used."""
    return {"kind": self.kind, "path": os.path.abspath(self.path),
            "fingerprint": self.fingerprint, "vocab_size": self.vocab_size}

  def encode(self, text: str, max_length: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The reference framing of one sentence: `(input_ids, attention_mask)` [T]."""
    (pieces,) = self.tokenize_ids([text])
    return frame_ids(pieces, max_length, self.cls_id, self.sep_id, self.pad_id)

  def encode_batch(self, texts: Sequence[str],
                   max_length: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """`encode` for many sentences: int32 [N, T] ids and attention mask."""
    framed = [frame_ids(p, max_length, self.cls_id, self.sep_id, self.pad_id)
              for p in self.tokenize_ids(texts)]
    if not framed:
      empty = np.zeros((0, max_length), np.int32)
      return empty, empty.copy()
    ids, masks = zip(*framed)
    return np.stack(ids), np.stack(masks)

  def decode(self, ids: Iterable[int]) -> str:
    """Pieces joined back into text, padding dropped (for inspection)."""
    tokens = [self.id_to_token(int(i)) for i in ids if int(i) != self.pad_id]
    return " ".join(tokens).replace(" ##", "")


class WordPieceTokenizer(Tokenizer):
  """BERT uncased WordPiece over a `vocab.txt` (one token per line)."""

  kind = "wordpiece"

  def __init__(self, vocab_path: str | None = None, lowercase: bool = True):
    self.path = vocab_path or default_vocab_path()
    self.lowercase = lowercase
    self._tok = self._build()

  def _build(self):
    # Imported here so the rest of the data package works without `tokenizers`
    # installed when only SentencePiece is used.
    import tokenizers  # pylint: disable=g-import-not-at-top
    from tokenizers import models  # pylint: disable=g-import-not-at-top
    from tokenizers import normalizers  # pylint: disable=g-import-not-at-top
    from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
    if not os.path.exists(self.path):
      raise FileNotFoundError(f"WordPiece vocab not found: {self.path}")
    model = models.WordPiece.from_file(self.path, unk_token="[UNK]",
                                       max_input_chars_per_word=100)
    tok = tokenizers.Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None,
        lowercase=self.lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The reference never splits its special tokens when they appear in text.
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if tok.token_to_id(t) is not None])
    return tok

  def __getstate__(self):
    return {"path": self.path, "lowercase": self.lowercase}

  def __setstate__(self, state):
    self.path = state["path"]
    self.lowercase = state["lowercase"]
    self._tok = self._build()

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def id_to_token(self, token_id: int) -> str:
    return self._tok.id_to_token(token_id)

  def tokenize(self, text: str) -> list[str]:
    """Word-piece strings of a stripped text (for tests and inspection)."""
    return self._tok.encode(text.strip(), add_special_tokens=False).tokens

  def tokenize_ids(self, texts: Sequence[str]) -> list[list[int]]:
    encodings = self._tok.encode_batch([t.strip() for t in texts],
                                       add_special_tokens=False)
    return [e.ids for e in encodings]


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model trained by `train_sentencepiece`.

  The special tokens are control symbols, so they never come out of ordinary
  text but have fixed ids the model can be trained with.
  """

  kind = "sentencepiece"

  def __init__(self, model_path: str):
    self.path = model_path
    self._sp = self._load()

  def _load(self):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    if not os.path.exists(self.path):
      raise FileNotFoundError(f"SentencePiece model not found: {self.path}")
    sp = spm.SentencePieceProcessor(model_file=self.path)
    for token in SPECIAL_TOKENS:
      if sp.piece_to_id(token) == sp.unk_id() and token != "[UNK]":
        raise ValueError(
            f"{self.path}: SentencePiece model has no {token} symbol; train it "
            "with `python -m lxmert_jax.data.tokenization train-spm`")
    return sp

  def __getstate__(self):
    return {"path": self.path}

  def __setstate__(self, state):
    self.path = state["path"]
    self._sp = self._load()

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def token_to_id(self, token: str) -> int | None:
    token_id = self._sp.piece_to_id(token)
    if token_id == self._sp.unk_id() and token != self._sp.id_to_piece(token_id):
      return None
    return token_id

  def id_to_token(self, token_id: int) -> str:
    return self._sp.id_to_piece(token_id)

  def tokenize_ids(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode([t.strip() for t in texts], out_type=int)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) != self.pad_id])


_KINDS = {
    "bert": WordPieceTokenizer,
    "wordpiece": WordPieceTokenizer,
    "spm": SentencePieceTokenizer,
    "sentencepiece": SentencePieceTokenizer,
}


def make_tokenizer(kind: str = "bert", path: str | None = None) -> Tokenizer:
  """Builds a tokenizer by kind.

  Args:
    kind: "bert"/"wordpiece" (a vocab.txt; default the shipped BERT vocab) or
      "spm"/"sentencepiece" (a `.model` file).
    path: the vocab or model file.

  Returns:
    A `Tokenizer`.
  """
  if kind not in _KINDS:
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(_KINDS)}")
  cls = _KINDS[kind]
  if cls is SentencePieceTokenizer:
    if path is None:
      raise ValueError("a SentencePiece tokenizer needs the path of its .model file")
    return cls(path)
  return cls(path)


def tokenizer_from_spec(spec: dict) -> Tokenizer:
  """Rebuilds the tokenizer a prepared dataset recorded with `Tokenizer.spec`."""
  return make_tokenizer(spec["kind"], spec["path"])


def iter_corpus_sentences(path: str) -> Iterable[str]:
  """Sentences of a text file (one per line) or of a reference JSON file.

  JSON files may be pre-training files (`sentf` per image) or task files (a
  list of records with `sent`).
  """
  if not path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          yield line.strip()
    return
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  for item in data:
    if "sentf" in item:
      for sents in item["sentf"].values():
        yield from (s.strip() for s in sents)
    elif "sent" in item:
      yield item["sent"].strip()


def train_sentencepiece(inputs: Sequence[str], vocab_size: int, model_prefix: str, *,
                        model_type: str = "unigram", lowercase: bool = True,
                        character_coverage: float = 1.0,
                        max_sentences: int = 5_000_000, seed: int = 0) -> SentencePieceTokenizer:
  """Trains a SentencePiece model with the pipeline's special symbols.

  Args:
    inputs: text files (one sentence per line) or reference JSON files.
    vocab_size: number of pieces, special symbols included.
    model_prefix: writes `<prefix>.model` and `<prefix>.vocab`.
    model_type: "unigram" or "bpe".
    lowercase: case-fold the text (as BERT-uncased does).
    character_coverage: fraction of characters covered by the model.
    max_sentences: sentences sampled for training (SentencePiece's own limit).
    seed: seed of that sample.

  Returns:
    The trained tokenizer.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  prefix = pathlib.Path(model_prefix)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    text_path = os.path.join(tmp, "corpus.txt")
    with open(text_path, "w", encoding="utf-8") as out:
      for path in inputs:
        for sent in iter_corpus_sentences(path):
          out.write(sent.replace("\n", " ") + "\n")
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        input=text_path, model_prefix=str(prefix), vocab_size=vocab_size,
        model_type=model_type, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        pad_piece="[PAD]", unk_piece="[UNK]",
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        character_coverage=character_coverage, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, hard_vocab_limit=False,
        minloglevel=2)
  return SentencePieceTokenizer(str(prefix) + ".model")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lxmert_jax.data.tokenization",
                                   description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser("train-spm", help="train a SentencePiece model")
  train.add_argument("--input", nargs="+", required=True,
                     help="text files (one sentence per line) or reference JSON files")
  train.add_argument("--vocab-size", type=int, required=True)
  train.add_argument("--out", required=True, help="model prefix: writes OUT.model, OUT.vocab")
  train.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
  train.add_argument("--cased", action="store_true", help="keep case (default: lower-case)")
  train.add_argument("--seed", type=int, default=0)
  enc = sub.add_parser("encode", help="print the framed ids of sentences")
  enc.add_argument("--kind", default="bert", choices=sorted(_KINDS))
  enc.add_argument("--path", default=None)
  enc.add_argument("--max-length", type=int, default=20)
  enc.add_argument("sentences", nargs="+")
  args = parser.parse_args(argv)
  if args.command == "train-spm":
    tok = train_sentencepiece(args.input, args.vocab_size, args.out,
                              model_type=args.model_type, lowercase=not args.cased,
                              seed=args.seed)
    print(f"wrote {tok.path} (vocab {tok.vocab_size}; [PAD]={tok.pad_id} [UNK]={tok.unk_id} "
          f"[CLS]={tok.cls_id} [SEP]={tok.sep_id} [MASK]={tok.mask_id})")
  else:
    tok = make_tokenizer(args.kind, args.path)
    for sent in args.sentences:
      ids, _ = tok.encode(sent, args.max_length)
      print(" ".join(map(str, ids.tolist())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
