"""Reading one client frame on the node: parse it, then check its signature when the node asks.

Signed messages (our extension, PROTOCOL.md part B §5): an optional ``sig`` object on a
client message, verified against the node's clock (passed in as ``now_ms``) and a nonce
replay cache. With ``require_signed`` an unsigned message is refused with ``SIGNATURE_REQUIRED``.
"""

from __future__ import annotations

import json

from fabstir.protocol.messages import ClientMessage
from fabstir.protocol.parse import DEFAULT_MAX_FRAME_BYTES, parse_client_message
from fabstir.protocol.signing import ReplayCache, SignatureError, verify_message

__all__ = ["ClientFrameReader"]


class ClientFrameReader:
    """Turns a client's frame into a :data:`ClientMessage`; see the module docstring.

    Args:
        max_frame_bytes: larger frames are refused with ``FRAME_TOO_LARGE``.
        verify_signatures: check a frame's ``sig`` (then every read needs ``now_ms``).
        require_signed: refuse unsigned frames (only with ``verify_signatures``).
        replay_cache: nonces already seen (shared by a node's connections); ``None`` checks none.
    """

    __slots__ = ("max_frame_bytes", "verify_signatures", "require_signed", "replay_cache")

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, verify_signatures: bool = False,
                 require_signed: bool = False, replay_cache: ReplayCache | None = None) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.verify_signatures = verify_signatures
        self.require_signed = require_signed
        self.replay_cache = replay_cache

    def read(self, frame: str | bytes, now_ms: int | None) -> ClientMessage:
        """Parse and verify one frame.

        Raises:
            RemoteProtocolError: the codes of :func:`parse_client_message`.
            SignatureError: SIGNATURE_INVALID, STALE_TIMESTAMP, REPLAYED_NONCE or SIGNATURE_REQUIRED,
                carrying the message's ``id``.
        """
        message = parse_client_message(frame, max_bytes=self.max_frame_bytes)
        if self.verify_signatures:
            assert now_ms is not None, "a reader that verifies signatures needs now_ms"
            self._check_signature(frame, message.request_id, now_ms)
        return message

    def _check_signature(self, frame: str | bytes, request_id: str | None, now_ms: int) -> None:
        if isinstance(frame, str) and '"sig"' in frame:
            obj = json.loads(frame)
            if "sig" in obj:
                try:
                    verify_message(obj, now_ms, self.replay_cache)
                except SignatureError as exc:
                    exc.request_id = request_id
                    raise
                return
        if self.require_signed:
            raise SignatureError("this node accepts only signed messages (add 'sig')", code="SIGNATURE_REQUIRED",
                                 request_id=request_id)
