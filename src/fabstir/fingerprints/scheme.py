"""The fingerprint itself: top-k of the final hidden states per 32 generated tokens, packed in bytes.

For an answer of ``n`` generated tokens ``t_1..t_n``, the states fingerprinted are the model's final hidden
states (after the last norm, what llama.cpp returns as embeddings with pooling none) at the positions of
``t_1..t_(n-1)``: the ``n - 1`` states a host computes anyway while generating (feeding ``t_j`` to get
``t_(j+1)``); the prompt is in every one of them through attention. They are cut into chunks of
:data:`CHUNK_TOKENS` rows; of each chunk (flattened, ``rows * n_embd`` values) the :data:`TOP_K` values of
largest magnitude are kept, as their flat indices and their fp16 values.

Bytes (``FORMAT_VERSION`` 1; integers are unsigned LEB128 varints)::

    version(1 byte) n_embd chunk_tokens top_k n_tokens token_id*n_tokens
    per chunk: k index deltas (ascending flat indices, first one from 0), then k fp16 values (little endian)

where ``k = min(top_k, rows * n_embd)``. The token ids are part of it: the verifier needs the exact tokens the
host generated (re-tokenizing the text need not give them back).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import numpy as np
import numpy.typing as npt

from fabstir.errors import FingerprintError

__all__ = ["CHUNK_TOKENS", "FORMAT_VERSION", "TOP_K", "Chunk", "Fingerprint", "fingerprint_states", "top_k_of"]

FORMAT_VERSION = 1
CHUNK_TOKENS = 32
TOP_K = 128
_MAX_TOKENS = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """The top-k of one chunk: ascending flat indices and their values (fp16)."""

    indices: npt.NDArray[np.int64]
    values: npt.NDArray[np.float16]


@dataclasses.dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a host commits for one answer: its token ids and one :class:`Chunk` per 32 states."""

    n_embd: int
    tokens: tuple[int, ...]
    chunks: tuple[Chunk, ...]
    chunk_tokens: int = CHUNK_TOKENS
    top_k: int = TOP_K

    def to_bytes(self) -> bytes:
        out = bytearray([FORMAT_VERSION])
        for number in (self.n_embd, self.chunk_tokens, self.top_k, len(self.tokens), *self.tokens):
            _put_varint(out, number)
        for chunk in self.chunks:
            for delta in np.diff(chunk.indices, prepend=0).tolist():
                _put_varint(out, int(delta))
            out += chunk.values.astype("<f2").tobytes()
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        """Raises FingerprintError (FINGERPRINT_MALFORMED) on anything but a well-formed fingerprint."""
        if not data or data[0] != FORMAT_VERSION:
            raise FingerprintError("unknown fingerprint format")
        reader = _Reader(data, 1)
        n_embd, chunk_tokens, top_k, n_tokens = (reader.varint() for _ in range(4))
        if not (0 < n_embd <= 1 << 20 and 0 < chunk_tokens <= 4096 and 0 < top_k <= 1 << 16
                and n_tokens <= _MAX_TOKENS):
            raise FingerprintError("fingerprint header out of range")
        tokens = tuple(reader.varint() for _ in range(n_tokens))
        chunks = []
        n_states = max(0, n_tokens - 1)
        for start in range(0, n_states, chunk_tokens):
            size = min(chunk_tokens, n_states - start) * n_embd
            k = min(top_k, size)
            indices = np.cumsum(np.array([reader.varint() for _ in range(k)], dtype=np.int64))
            if k and (indices[-1] >= size or (k > 1 and np.any(np.diff(indices) <= 0))):
                raise FingerprintError("fingerprint indices out of order or range")
            values = np.frombuffer(reader.take(2 * k), dtype="<f2").astype(np.float16)
            chunks.append(Chunk(indices, values))
        if reader.offset != len(data):
            raise FingerprintError("trailing bytes after the fingerprint")
        return cls(n_embd, tokens, tuple(chunks), chunk_tokens, top_k)

    def to_text(self) -> str:
        """Base64 of :meth:`to_bytes` (how receipts carry it)."""
        return base64.b64encode(self.to_bytes()).decode("ascii")

    @classmethod
    def from_text(cls, text: str) -> Fingerprint:
        try:
            return cls.from_bytes(base64.b64decode(text.encode("ascii"), validate=True))
        except (ValueError, UnicodeError):
            raise FingerprintError("fingerprint is not base64") from None

    def digest(self) -> str:
        """Hex SHA-256 of the bytes."""
        return hashlib.sha256(self.to_bytes()).hexdigest()


def top_k_of(rows: npt.NDArray[np.float32], top_k: int = TOP_K) -> npt.NDArray[np.int64]:
    """Ascending flat indices of the ``top_k`` values of largest magnitude in ``rows`` (a tie at the k-th
    value may go either way; the check's overlap tolerance absorbs it)."""
    flat = np.abs(rows.reshape(-1))
    k = min(top_k, flat.size)
    if k == flat.size:
        return np.arange(k, dtype=np.int64)
    return np.sort(np.argpartition(flat, flat.size - k)[flat.size - k:]).astype(np.int64)


def fingerprint_states(states: npt.NDArray[np.float32], tokens: list[int] | tuple[int, ...], *,
                       chunk_tokens: int = CHUNK_TOKENS, top_k: int = TOP_K) -> Fingerprint:
    """The fingerprint of ``states`` (the states at the positions of ``tokens[:-1]``, one row each)."""
    states = np.asarray(states, dtype=np.float32)
    if states.ndim != 2 or states.shape[0] != max(0, len(tokens) - 1):
        raise FingerprintError(f"need one state per token but the last: {states.shape} for {len(tokens)} tokens")
    chunks = []
    for start in range(0, states.shape[0], chunk_tokens):
        block = states[start:start + chunk_tokens]
        indices = top_k_of(block, top_k)
        chunks.append(Chunk(indices, block.reshape(-1)[indices].astype(np.float16)))
    return Fingerprint(int(states.shape[1]), tuple(int(t) for t in tokens), tuple(chunks), chunk_tokens, top_k)


def _put_varint(out: bytearray, number: int) -> None:
    while True:
        byte = number & 0x7F
        number >>= 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data, self.offset = data, offset

    def varint(self) -> int:
        number = shift = 0
        while True:
            if self.offset >= len(self.data) or shift > 35:
                raise FingerprintError("fingerprint truncated")
            byte = self.data[self.offset]
            self.offset += 1
            number |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return number

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise FingerprintError("fingerprint truncated")
        part = self.data[self.offset:self.offset + size]
        self.offset += size
        return part
