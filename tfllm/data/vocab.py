"""Train a BERT WordPiece vocabulary on a corpus with Hugging Face ``tokenizers``.

The result is an ordinary uncased ``BertTokenizerFast`` (BERT normalisation and pre-tokenisation,
``##`` continuation pieces), so it saves with ``save_pretrained`` and loads anywhere a BERT
tokenizer does. The special tokens get the first ids, [PAD] = 0 as BERT expects.

    >>> tokenizer = train_wordpiece(corpus.documents, vocab_size=8000)
    >>> tokenizer.tokenize("the movie was great")
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import BertTokenizerFast

from tfllm.errors import TfllmError

log = logging.getLogger("tfllm")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size <= len(SPECIAL_TOKENS):
        raise TfllmError(f"config key model.vocab_size: {vocab_size} is too small for the "
                         f"{len(SPECIAL_TOKENS)} special tokens ({' '.join(SPECIAL_TOKENS)}) plus "
                         "the corpus's characters; use a few thousand (e.g. 8000)")


def train_wordpiece(texts: Sequence[str], vocab_size: int, lowercase: bool = True,
                    min_frequency: int = 2):
    """A ``BertTokenizerFast`` with a WordPiece vocabulary of (about) ``vocab_size`` learned on ``texts``.

    The vocabulary always holds every character seen in the corpus, so a tiny ``vocab_size``
    can come out larger than asked for (logged).
    """

    check_vocab_size(vocab_size)
    if not texts:
        raise TfllmError("cannot train a vocabulary on an empty corpus")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True,
                                                      handle_chinese_chars=True, strip_accents=None)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS, continuing_subword_prefix="##",
                                        show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab, key=vocab.get)
    if ordered[:len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
        raise TfllmError("vocabulary training did not put the special tokens first")
    if len(ordered) > vocab_size:
        log.info("trained vocabulary has %d tokens (more than model.vocab_size=%d: every character "
                 "of the corpus is kept)", len(ordered), vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("".join(f"{t}\n" for t in ordered), encoding="utf-8")
        fast = BertTokenizerFast(vocab_file=str(path), do_lower_case=lowercase, strip_accents=None,
                                 model_max_length=512)
    return fast
