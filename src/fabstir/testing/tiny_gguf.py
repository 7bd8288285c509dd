"""Write a tiny random-weight llama GGUF model that llama.cpp can load.

The model is meant for tests: it is a few hundred KB, deterministic for a
given seed, has a working SentencePiece ("llama") tokenizer with byte
fallback, and never emits EOS/BOS/UNK or byte tokens, so greedy or sampled
generation always runs to ``max_tokens`` and produces valid UTF-8 text.

Suppression trick: dimension 0 of the residual stream is a constant "bias"
channel (1.0 in every token embedding, never written by attention/FFN
outputs). After the final RMS norm it is large and positive, so a strongly
negative weight in that column of the output matrix pushes a token's logit
far below every other logit.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import gguf
import numpy as np
import numpy.typing as npt

__all__ = ["write_tiny_gguf"]

_ARCH = "llama"
_NAME = "fabstir-tiny-random"
_SPACE = "\u2581"  # SentencePiece word-boundary marker "▁"
_WEIGHT_STD = 0.02
_SUPPRESS = -4.0  # output weight on the bias channel for banned tokens
_EOS = 2  # "</s>"

_WORDS = (
    "the a an and or but of to in on at by for with from as is are was were be been "
    "it its this that these those there here he she they we you I me him her them us "
    "my your his our their one two three time day year man woman child people world "
    "once upon long ago little big old new good bad small great first last very so "
    "not no yes all some any many more most other such only then than now when where "
    "what who how why which if while do does did have has had can could will would "
    "should may might must say said go went come came see saw make made know knew "
    "think take get give find tell ask work seem feel try leave call run walk look "
    "want like love live play went home house tree forest king queen cat dog bird "
    "sun moon star sea water fire light dark night morning story hello test model "
    "Once The A In It He She They We There Hello"
).split()

_PUNCT = list(".,!?;:'\"-()")
_ALNUM = [chr(c) for c in range(ord("a"), ord("z") + 1)]
_ALNUM += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
_ALNUM += [str(d) for d in range(10)]


@dataclass(frozen=True)
class _Hparams:
    """Model hyperparameters."""

    n_vocab: int
    n_ctx: int
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    rms_eps: float = 1e-5
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class _Vocab:
    """Tokenizer vocabulary (pieces, scores, types) and the ids to suppress."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    banned: list[int]


def _word_pieces() -> list[str]:
    """Normal SPM pieces: characters, ``▁x`` and every prefix of ``▁word``.

    Prefix closure guarantees the SPM bigram merge can build whole words.
    """
    pieces: dict[str, None] = {_SPACE: None}
    for ch in _ALNUM + _PUNCT:
        pieces[ch] = None
        pieces[_SPACE + ch] = None
    for word in _WORDS:
        full = _SPACE + word
        for end in range(2, len(full) + 1):
            pieces[full[:end]] = None
    return list(pieces)


def _build_vocab() -> _Vocab:
    """Build the SPM vocabulary: specials, 256 byte tokens, then word pieces."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    banned = list(range(len(tokens)))
    pieces = _word_pieces()
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * len(banned) + [-float(i) for i in range(len(pieces))]
    return _Vocab(tokens, scores, [int(t) for t in types], banned)


def _normal(rng: np.random.Generator, *shape: int) -> npt.NDArray[np.float32]:
    """Small random normal weights (numpy shape = reversed ggml ne)."""
    return (rng.standard_normal(shape) * _WEIGHT_STD).astype(np.float32)


def _ones(n: int) -> npt.NDArray[np.float32]:
    return np.ones(n, dtype=np.float32)


def _global_tensors(
    rng: np.random.Generator, hp: _Hparams, banned: list[int]
) -> dict[str, npt.NDArray[np.float32]]:
    """Embedding, final norm and output head with the bias channel wired in."""
    embd = _normal(rng, hp.n_vocab, hp.n_embd)
    embd[:, 0] = 1.0
    output = _normal(rng, hp.n_vocab, hp.n_embd)
    output[:, 0] = 0.0
    output[banned, 0] = _SUPPRESS
    return {
        "token_embd.weight": embd,
        "output_norm.weight": _ones(hp.n_embd),
        "output.weight": output,
    }


def _block_tensors(
    rng: np.random.Generator, hp: _Hparams, i: int
) -> dict[str, npt.NDArray[np.float32]]:
    """One transformer block; output projections never write channel 0."""
    kv_dim = hp.n_head_kv * hp.head_dim
    attn_out = _normal(rng, hp.n_embd, hp.n_head * hp.head_dim)
    ffn_down = _normal(rng, hp.n_embd, hp.n_ff)
    attn_out[0, :] = 0.0
    ffn_down[0, :] = 0.0
    p = f"blk.{i}."
    return {
        p + "attn_norm.weight": _ones(hp.n_embd),
        p + "attn_q.weight": _normal(rng, hp.n_head * hp.head_dim, hp.n_embd),
        p + "attn_k.weight": _normal(rng, kv_dim, hp.n_embd),
        p + "attn_v.weight": _normal(rng, kv_dim, hp.n_embd),
        p + "attn_output.weight": attn_out,
        p + "ffn_norm.weight": _ones(hp.n_embd),
        p + "ffn_gate.weight": _normal(rng, hp.n_ff, hp.n_embd),
        p + "ffn_up.weight": _normal(rng, hp.n_ff, hp.n_embd),
        p + "ffn_down.weight": ffn_down,
    }


def _add_hparams(w: gguf.GGUFWriter, hp: _Hparams) -> None:
    """Metadata keys llama.cpp reads for the llama architecture."""
    w.add_name(_NAME)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(hp.n_vocab)
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_rope_dimension_count(hp.head_dim)
    w.add_rope_freq_base(hp.rope_base)
    w.add_layer_norm_rms_eps(hp.rms_eps)


def _add_tokenizer(w: gguf.GGUFWriter, vocab: _Vocab) -> None:
    """SentencePiece ("llama") tokenizer metadata."""
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(_EOS)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def write_tiny_gguf(
    path: str | os.PathLike[str], *, seed: int = 0, context_length: int = 256, eos_weight: float | None = None
) -> pathlib.Path:
    """Write a tiny random llama GGUF (F32) to ``path`` and return the path.

    The file is byte-identical for equal arguments. Special tokens are never generated, unless ``eos_weight``
    is given: then the end-of-sequence token is allowed, with that weight on the bias channel (with ``seed=0``,
    0.013 ends greedy answers after 7 to 14 tokens; 0.01 never, 0.02 at once).
    """
    out = pathlib.Path(path)
    vocab = _build_vocab()
    hp = _Hparams(n_vocab=len(vocab.tokens), n_ctx=context_length)
    rng = np.random.default_rng(seed)
    tensors = _global_tensors(rng, hp, vocab.banned)
    if eos_weight is not None:
        tensors["output.weight"][_EOS, 0] = eos_weight
    for i in range(hp.n_layer):
        tensors.update(_block_tensors(rng, hp, i))

    writer = gguf.GGUFWriter(out, _ARCH)
    try:
        _add_hparams(writer, hp)
        _add_tokenizer(writer, vocab)
        for name, data in tensors.items():
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out
