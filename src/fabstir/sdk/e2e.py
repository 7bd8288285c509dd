"""The SDK's side of end-to-end encryption (PROTOCOL.md §2.2, §2.5, §3.2, §5.1): which keys a session uses.

Theory of operation. A session is encrypted when the host's secp256k1 public key is
known (see :meth:`fabstir.sdk.inference.InferenceManager.connect_to_session` for
which key is trusted). :class:`ClientEncryption` then holds, for that session, the host's
key and the client key that signs every ``encrypted_session_init`` (the SDK's account, or a
random key made once per session), so the node's ``client_address`` is ours.

The session keys themselves, the sealing of prompts and resumes and the opening of the
answer's frames (strictly ``chunk_0, chunk_1, …``) live in the sans-I/O
:class:`~fabstir.protocol.client_connection.ClientConnection` (Rule C5). Like the TS SDK,
every prompt starts with a fresh ``encrypted_session_init`` (a new random session key,
message index 0): within one key the public protocol's AAD ``chunk_<i>`` does not name the
response, so an old response's chunks could be replayed into a later one; a new key per
prompt rules that out. The init sent when the session opens is used by the first prompt, so
that one costs no extra round trip. ``stream_end`` (plaintext) ends an answer; if it never
comes, the answer ends :data:`END_GRACE_S` seconds after the ``final`` chunk or ``encrypted_response``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import coincurve

from fabstir.errors import ConfigError
from fabstir.protocol import ChatTurn
from fabstir.protocol.e2e import E2EError, decode_hex
from fabstir.protocol.e2e_keys import random_private_key

__all__ = ["END_GRACE_S", "ClientEncryption", "check_announced_key", "choose_encryption", "embed_context",
           "normalize_public_key"]

END_GRACE_S = 3.0
"""Seconds to wait for ``stream_end`` after the ``final`` chunk or ``encrypted_response`` (as the TS SDK)."""

EMBEDDED_CONTEXT_MESSAGES = 10
"""Messages of restored history embedded in the first prompt to a node that cannot resume encrypted."""


def normalize_public_key(key: str | bytes) -> str:
    """A secp256k1 public key (33 or 65 bytes, hex with optional ``0x``) as compressed lowercase hex.

    Raises:
        ConfigError: not a point on the curve.
    """
    try:
        raw = decode_hex(key, "host public key") if isinstance(key, str) else bytes(key)
        if len(raw) not in (33, 65):
            raise ValueError(len(raw))
        return str(coincurve.PublicKey(raw).format(compressed=True).hex())
    except (E2EError, ValueError, TypeError) as exc:
        raise ConfigError("the host public key must be a secp256k1 point (33 or 65 bytes of hex)",
                          code="INVALID_HOST_KEY") from exc


@dataclasses.dataclass(frozen=True, eq=False)
class ClientEncryption:
    """The keys one encrypted session uses; see the module docstring."""

    host_public_key: str
    """The host's secp256k1 key, compressed hex (:func:`normalize_public_key`)."""
    client_key: bytes = dataclasses.field(repr=False)
    """Signs every ``encrypted_session_init``."""
    required: bool
    """The caller asked for encryption: never fall back to plaintext."""
    announced: bool
    """The key came from the node's own ``connected`` message (protects against passive observers only)."""

    @classmethod
    def create(cls, host_public_key: str, client_key: bytes | None, *, required: bool,
               announced: bool) -> ClientEncryption:
        """Normalise the host key; a random client key when none is given.

        Raises:
            ConfigError: INVALID_HOST_KEY.
        """
        return cls(normalize_public_key(host_public_key),
                   bytes(client_key) if client_key is not None else random_private_key(), required, announced)


def choose_encryption(host_public_key: str | None, encryption: bool | None, *, announced: str | None,
                      client_key: bytes | None) -> ClientEncryption | None:
    """The keys a new session encrypts with, or ``None`` for plaintext.

    ``encryption``: ``None`` encrypts when ``host_public_key`` is given, ``True`` always (trusting the
    key the node ``announced`` when none is given), ``False`` never.

    Raises:
        ConfigError: HOST_KEY_UNKNOWN (``encryption=True`` and no key), INVALID_HOST_KEY.
        E2EError: HOST_KEY_MISMATCH (the node announces another key).
    """
    if encryption is False:
        return None
    key = host_public_key if host_public_key is not None or not encryption else announced
    if key is None:
        if encryption:
            raise ConfigError("encryption=True, but the host's public key is unknown: pass host_public_key "
                              "(its registry metadata publicKey)", code="HOST_KEY_UNKNOWN")
        return None
    chosen = ClientEncryption.create(key, client_key, required=bool(encryption), announced=host_public_key is None)
    check_announced_key(chosen, announced)
    return chosen


def check_announced_key(encryption: ClientEncryption, announced: str | None) -> None:
    """Raises E2EError HOST_KEY_MISMATCH when the node announces a key other than the one we encrypt to."""
    if announced is None:
        return
    try:
        same = normalize_public_key(announced) == encryption.host_public_key
    except ConfigError:
        same = False
    if not same:
        raise E2EError(f"the host announces public key {announced[:80]!r}, not the one given "
                       f"({encryption.host_public_key}); is its registry metadata stale?", code="HOST_KEY_MISMATCH")


def embed_context(history: Sequence[ChatTurn], prompt: str) -> str:
    """``prompt`` preceded by the last messages of ``history``, for a node that cannot load it otherwise."""
    turns = list(history)[-EMBEDDED_CONTEXT_MESSAGES:]
    if not turns:
        return prompt
    lines = "\n".join(f"{turn.role.capitalize()}: {turn.content}" for turn in turns)
    return f"Previous conversation:\n{lines}\n\nUser: {prompt}"
