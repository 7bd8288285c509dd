"""fabstir: SDK and reference host node for a decentralized LLM inference marketplace.

The client surface is re-exported here (the SDK loads on first use of one of its names); the host node
lives in :mod:`fabstir.node` and the sans-I/O wire protocol in :mod:`fabstir.protocol`. The package layers
are pinned by ``tests/test_architecture.py``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fabstir._version import __version__
from fabstir.errors import (
    AuthenticationError,
    ConfigError,
    ConnectError,
    ConnectionClosedError,
    EngineError,
    FabstirError,
    InvalidMessageIndexError,
    LocalProtocolError,
    ModelNotFoundError,
    NodeError,
    ProtocolError,
    RemoteProtocolError,
    RequestTimeoutError,
    SessionError,
    TokenLimitExceededError,
    TransportError,
)

if TYPE_CHECKING:
    from fabstir.protocol import ChatTurn, Usage
    from fabstir.sdk import (
        FabstirSDK,
        InferenceManager,
        InferenceResult,
        InferenceStream,
        PromptOptions,
        RetryPolicy,
        Timeouts,
    )

_LAZY = {
    # Loaded on first use, so that importing any fabstir package (the node, discovery) never loads the SDK.
    "ChatTurn": "fabstir.protocol",
    "Usage": "fabstir.protocol",
    **dict.fromkeys(["FabstirSDK", "InferenceManager", "InferenceResult", "InferenceStream", "PromptOptions",
                     "RetryPolicy", "Timeouts"], "fabstir.sdk"),
}
_EAGER_BEFORE = ("chain", "discovery", "protocol", "sdk")
"""Subpackages that ``import fabstir`` used to load; ``fabstir.<name>`` still reaches them without an import."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _EAGER_BEFORE:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AuthenticationError",
    "ChatTurn",
    "ConfigError",
    "ConnectError",
    "ConnectionClosedError",
    "EngineError",
    "FabstirError",
    "FabstirSDK",
    "InferenceManager",
    "InferenceResult",
    "InferenceStream",
    "InvalidMessageIndexError",
    "LocalProtocolError",
    "ModelNotFoundError",
    "NodeError",
    "PromptOptions",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestTimeoutError",
    "RetryPolicy",
    "SessionError",
    "Timeouts",
    "TokenLimitExceededError",
    "TransportError",
    "Usage",
    "__version__",
]
