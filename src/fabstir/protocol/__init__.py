"""The sans-I/O protocol core shared by the SDK and the node.

Nothing here imports asyncio or a network library: messages, parsing, the
stream accumulator and the session state table are pure, and both ends of the
wire are thin I/O around them.
"""

from fabstir.protocol.codes import PROTOCOL_FEATURES, ErrorCode, Feature
from fabstir.protocol.messages import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    AuthChallenge,
    AuthChallengeRequest,
    AuthRequest,
    AuthSuccess,
    ChatTurn,
    ClientMessage,
    Connected,
    ErrorMessage,
    History,
    HistoryRequest,
    InferenceRequest,
    PromptMessage,
    ServerMessage,
    SessionClear,
    SessionInit,
    SessionInitAck,
    SessionResume,
    SessionResumed,
    StreamCancel,
    StreamChunk,
    StreamEnd,
    TokenRefresh,
    UnknownMessage,
    Usage,
)
from fabstir.protocol.parse import (
    DEFAULT_MAX_FRAME_BYTES,
    encode_message,
    parse_client_message,
    parse_server_message,
)
from fabstir.protocol.state import TRANSITIONS, SessionState, SessionStateMachine
from fabstir.protocol.stream import StreamAccumulator, StreamSnapshot, TextDelta, error_from_message

__all__ = [
    "AuthChallenge",
    "AuthChallengeRequest",
    "AuthRequest",
    "AuthSuccess",
    "History",
    "HistoryRequest",
    "SessionClear",
    "TokenRefresh",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "PROTOCOL_FEATURES",
    "TRANSITIONS",
    "ChatTurn",
    "ClientMessage",
    "Connected",
    "ErrorCode",
    "ErrorMessage",
    "Feature",
    "InferenceRequest",
    "PromptMessage",
    "ServerMessage",
    "SessionInit",
    "SessionInitAck",
    "SessionResume",
    "SessionResumed",
    "SessionState",
    "SessionStateMachine",
    "StreamAccumulator",
    "StreamCancel",
    "StreamChunk",
    "StreamEnd",
    "StreamSnapshot",
    "TextDelta",
    "UnknownMessage",
    "Usage",
    "encode_message",
    "error_from_message",
    "parse_client_message",
    "parse_server_message",
]
