"""The embedded T5 tokenizer: a SentencePiece-style unigram model estimated here from a built-in corpus.

SD3's third text encoder and FLUX's second are T5 encoders, which read SentencePiece unigram
pieces (``▁`` marks a word start). The embedded models' pieces are every printable ASCII
character, ``▁`` and each word of the embedded CLIP tokenizer's prompt corpus (``▁word``); a
piece's score is the log of its relative frequency in that corpus (one counting pass of unigram
training, no pruning), so common prompt words are one piece and any other text still tokenizes
character by character (characters outside ASCII become ``<unk>``, as T5's own vocabulary does
for many). Counting is deterministic: the same pieces and scores on every run.
"""

from __future__ import annotations

import math
import string
from collections import Counter

from worker.embedded.tokenizer import _CORPUS

#: T5's special pieces, at T5's ids: padding 0, end of sequence 1, unknown 2.
SPECIAL_PIECES = ("<pad>", "</s>", "<unk>")
#: SentencePiece's word-start marker.
WORD_START = "\u2581"


def unigram_vocab(words: list[str]) -> list[tuple[str, float]]:
    """Return (piece, log-probability score) pairs counted from ``words``, specials first."""
    word_counts = Counter(WORD_START + word for word in words)
    char_counts = Counter(char for word in words for char in word)
    char_counts.update(string.printable.strip())  # every ASCII character, seen once at least
    total = sum(word_counts.values()) + sum(char_counts.values()) + len(words)
    vocab = [(piece, 0.0) for piece in SPECIAL_PIECES]
    vocab.append((WORD_START, math.log(len(words) / total)))
    vocab += [(char, math.log(count / total)) for char, count in sorted(char_counts.items())]
    vocab += [(word, math.log(count / total)) for word, count in sorted(word_counts.items())]
    return vocab


def build_t5_tokenizer():  # -> T5Tokenizer
    """Return the embedded models' T5 tokenizer (no ``<extra_id_*>`` sentinels: an encoder only)."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=unigram_vocab(_CORPUS), extra_ids=0)
