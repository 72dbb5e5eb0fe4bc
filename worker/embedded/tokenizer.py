"""The embedded models' tokenizer: a complete byte-level CLIP BPE tokenizer, learned here.

Its merges are learned deterministically from a built-in corpus of prompt words, so common
prompt words are single tokens; every other string still tokenizes byte by byte.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import Counter
from pathlib import Path

#: Number of BPE merges learned from ``_CORPUS`` for the tokenizer.
MERGE_COUNT = 600

# Words typical of image prompts; the tokenizer's merges are learned from them so common
# prompt words become single tokens. Every other string still tokenizes byte by byte.
_CORPUS = """
a an the of in on at with and or by from to for over under near beside behind above below
lighthouse at dusk portrait of a woman man girl boy child old young cat dog horse bird fox
owl dragon robot astronaut knight wizard castle city street forest mountain mountains river
lake ocean sea beach island desert snow winter summer autumn spring sunset sunrise night
day morning evening sky clouds cloudy rain storm fog mist light lights lighting shadow
shadows dark bright colorful colourful golden hour blue red green yellow orange purple pink
black white gray grey silver gold painting photo photograph photography illustration drawing
sketch render rendering digital art artwork concept style detailed highly intricate
beautiful dramatic cinematic epic fantasy science fiction futuristic ancient medieval
vintage retro modern realistic photorealistic hyperrealistic anime cartoon comic oil
watercolor watercolour pencil charcoal ink canvas studio lens bokeh depth field sharp focus
wide angle close up closeup macro aerial view landscape interior exterior architecture house
building tower bridge garden flowers flower tree trees leaves grass field road car train
ship boat airplane space planet stars galaxy moon sun fire water ice stone wood glass metal
steampunk cyberpunk neon glowing reflection reflections trending masterpiece best quality
high resolution octane unreal engine volumetric soft hard warm cold muted vibrant pastel
minimalist abstract surreal magical mystical cozy peaceful quiet busy crowded empty
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """Return the byte-to-printable-character map used by byte-level BPE (GPT-2, CLIP)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def learn_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    """Learn up to ``count`` BPE merges from ``words``, deterministically.

    Ties between equally frequent pairs are broken by the pair's text, so the result
    never depends on dict ordering or hashing.
    """
    byte_map = bytes_to_unicode()
    vocab: Counter[tuple[str, ...]] = Counter()
    for word in words:
        symbols = [byte_map[b] for b in word.lower().encode("utf-8")]
        symbols[-1] += "</w>"
        vocab[tuple(symbols)] += 1
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in vocab.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab = Counter({_merge_pair(symbols, best): freq for symbols, freq in vocab.items()})
    return merges


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


@functools.cache
def corpus_merges() -> list[tuple[str, str]]:
    """Return the embedded tokenizer's merges, learned once per process."""
    return learn_merges(_CORPUS, MERGE_COUNT)


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Return a CLIP-layout vocabulary: bytes, bytes ending a word, merges, specials."""
    base = list(bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def build_tokenizer():  # -> CLIPTokenizer
    """Return the embedded model's complete byte-level CLIP tokenizer."""
    from transformers import CLIPTokenizer

    merges = corpus_merges()
    return CLIPTokenizer(vocab=build_vocab(merges), merges=merges, model_max_length=77)


def write_slow_tokenizer_files(tokenizer, directory: Path) -> None:
    """Write vocab.json and merges.txt beside tokenizer.json, for loaders without `tokenizers`."""
    vocab = tokenizer.get_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, sort_keys=True))
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in corpus_merges()]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n")
