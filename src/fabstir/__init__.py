"""fabstir: SDK and reference host node for a decentralized LLM inference marketplace.

The client surface is re-exported here; the host node lives in
:mod:`fabstir.node` and the sans-I/O wire protocol in :mod:`fabstir.protocol`.
"""

__version__ = "0.1.0"

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
