"""permessage-deflate (RFC 7692) that leaves small messages uncompressed.

Theory of operation. RFC 7692 compresses per message: a message whose first frame has RSV1
set is compressed, any other is sent as is, and the receiver inflates only the former. So a
sender may choose for each message. python-websockets has no per-message switch (its extension
compresses every data frame), so :class:`SmallMessagesUncompressed` wraps its
``PerMessageDeflate`` and passes unfragmented messages under ``min_size`` bytes through
untouched. The compressor's shared window (context takeover) simply never sees those messages,
and the peer's decompressor never sees them either, so both stay in step.

Why: a token chunk is ~80 bytes of JSON. Deflating it (``compress`` plus a sync ``flush``,
per frame) cost 11.5% of the node's event loop on the ``overhead`` workload and saves a few
dozen bytes; history replies (``session_resume``, ``get_history``) are kilobytes and still
shrink by an order of magnitude.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.typing import ExtensionParameter

__all__ = ["COMPRESS_MIN_BYTES", "SmallMessagesUncompressed", "SmallMessagesUncompressedFactory"]

COMPRESS_MIN_BYTES = 512
"""Messages shorter than this go out uncompressed (every token chunk; a frame of several coalesced
tokens usually too). Node's ``ws`` library uses a 1 KiB threshold by default."""

_DATA = (Opcode.TEXT, Opcode.BINARY)


class SmallMessagesUncompressed(PerMessageDeflate):
    """``PerMessageDeflate`` that sends unfragmented messages under ``min_size`` bytes as they are (RSV1 clear)."""

    def __init__(self, negotiated: PerMessageDeflate, min_size: int) -> None:
        super().__init__(negotiated.remote_no_context_takeover, negotiated.local_no_context_takeover,
                         negotiated.remote_max_window_bits, negotiated.local_max_window_bits,
                         negotiated.compress_settings)
        self.min_size = min_size

    def encode(self, frame: Frame) -> Frame:
        if frame.fin and frame.opcode in _DATA and len(frame.data) < self.min_size:
            return frame
        return super().encode(frame)


class SmallMessagesUncompressedFactory(ServerPerMessageDeflateFactory):
    """Negotiates permessage-deflate as its parent does, then hands out :class:`SmallMessagesUncompressed`."""

    def __init__(self, *, min_size: int = COMPRESS_MIN_BYTES, **settings: Any) -> None:
        super().__init__(**settings)
        self.min_size = min_size

    def process_request_params(self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
                               ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, negotiated = super().process_request_params(params, accepted_extensions)
        return response, SmallMessagesUncompressed(negotiated, self.min_size)
