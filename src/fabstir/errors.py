"""The one exception tree of fabstir, split by where a failure happened.

::

    FabstirError
     ├── ProtocolError            bad data on the wire; carries an ErrorCode
     │    ├── LocalProtocolError  we tried something the protocol forbids (illegal state transition)
     │    └── RemoteProtocolError the peer sent something malformed or out of order
     ├── NodeError                the node answered a request with a coded ``error``
     │    ├── TokenLimitExceededError
     │    ├── InvalidMessageIndexError
     │    └── AuthenticationError  AUTH_FAILED, SESSION_EXPIRED, PERMISSION_DENIED
     ├── TransportError           the connection itself failed
     │    ├── ConnectError        could not reach the host
     │    ├── ConnectionClosedError
     │    └── RequestTimeoutError (also a built-in ``TimeoutError``)
     ├── SessionError             the SDK was used out of order (no session, one request at a time)
     ├── ChainError               the blockchain could not be used
     │    ├── ChainConnectionError  the JSON-RPC endpoint is unreachable
     │    └── ContractError       a transaction or call reverted (``reason`` is the revert string)
     ├── ConfigError              invalid configuration
     ├── StorageError             conversation storage failed: STORAGE_KEY_INVALID, STORAGE_TAMPERED,
     │                            STORAGE_NOT_FOUND, STORAGE_STALE_POINTER, STORAGE_BAD_FORMAT,
     │                            STORAGE_UNAVAILABLE, STORAGE_BUCKET_NOT_FOUND, STORAGE_ACCESS_DENIED
     ├── EngineError              the inference engine failed
     │    └── ModelNotFoundError  (also a built-in ``FileNotFoundError``)
     ├── FingerprintError         an activation fingerprint is malformed or cannot be checked:
     │                            FINGERPRINT_MALFORMED, FINGERPRINT_MISSING, FINGERPRINT_UNCHECKABLE
     └── ProofError               a checkpoint proof cannot be made or does not verify: ZK_UNAVAILABLE,
                                  ZK_KEYS_FAILED, PROOF_FAILED, PROOF_MALFORMED

Every error has a ``code`` (a string from :class:`fabstir.protocol.ErrorCode` where
one applies) and a human ``message``; ``str(error)`` is a one-line description fit
for a terminal.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ChainConnectionError",
    "ChainError",
    "ConfigError",
    "ContractError",
    "ConnectError",
    "ConnectionClosedError",
    "EngineError",
    "FabstirError",
    "FingerprintError",
    "InvalidMessageIndexError",
    "LocalProtocolError",
    "ModelNotFoundError",
    "NodeError",
    "ProofError",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestTimeoutError",
    "SessionError",
    "StorageError",
    "TokenLimitExceededError",
    "TransportError",
]


class FabstirError(Exception):
    """Root of every error raised by fabstir."""

    default_code = "FABSTIR_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ProtocolError(FabstirError):
    """Data on the wire broke the protocol.

    Attributes:
        request_id: the ``id`` of the offending message, when it could be read.
    """

    default_code = "INVALID_MESSAGE"

    def __init__(
        self, message: str, *, code: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.request_id = request_id


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol forbids."""

    default_code = "ILLEGAL_TRANSITION"


class RemoteProtocolError(ProtocolError):
    """The peer sent malformed or unexpected data."""


class NodeError(FabstirError):
    """The node rejected a request with a coded ``error`` message.

    Attributes:
        request_id: the ``id`` of the request the error answers, if known.
        details: any extra fields of the error message (e.g. ``prompt_tokens``).
    """

    default_code = "NODE_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        request_id: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.request_id = request_id
        self.details = details or {}


class TokenLimitExceededError(NodeError):
    """The prompt does not fit in the model's context window."""

    default_code = "TOKEN_LIMIT_EXCEEDED"


class InvalidMessageIndexError(NodeError):
    """The node saw a gap or a repeat in ``message_index``."""

    default_code = "INVALID_MESSAGE_INDEX"


class AuthenticationError(NodeError):
    """The host refused the session's authentication or its token (see ``code``)."""

    default_code = "AUTH_FAILED"


class TransportError(FabstirError):
    """The connection to the host failed."""

    default_code = "TRANSPORT_ERROR"


class ConnectError(TransportError):
    """The host could not be reached."""

    default_code = "CONNECT_FAILED"


class ConnectionClosedError(TransportError):
    """The connection closed while a request was in flight."""

    default_code = "CONNECTION_CLOSED"


class RequestTimeoutError(TransportError, TimeoutError):
    """The host did not answer in time."""

    default_code = "TIMEOUT"


class SessionError(FabstirError):
    """The SDK was used out of order (no session, request already running)."""

    default_code = "SESSION_ERROR"


class ChainError(FabstirError):
    """The blockchain could not be used."""

    default_code = "CHAIN_ERROR"


class ChainConnectionError(ChainError):
    """The chain's JSON-RPC endpoint cannot be reached."""

    default_code = "CHAIN_UNREACHABLE"


class ContractError(ChainError):
    """A contract call or transaction reverted.

    Attributes:
        reason: the contract's revert string ("Price below host minimum"), or "" if none.
        function: the contract function that failed, e.g. ``JobMarketplace.createSessionJob``.
    """

    default_code = "TRANSACTION_REVERTED"

    def __init__(self, message: str, *, reason: str = "", function: str = "", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.reason = reason
        self.function = function


class ConfigError(FabstirError):
    """A configuration value is invalid."""

    default_code = "CONFIG_ERROR"


class StorageError(FabstirError):
    """Conversation storage failed; ``code`` says how (a wrong key, tampered data, a missing or stale record)."""

    default_code = "STORAGE_ERROR"


class EngineError(FabstirError):
    """The inference engine failed."""

    default_code = "ENGINE_ERROR"


class ModelNotFoundError(EngineError, FileNotFoundError):
    """The model file does not exist or cannot be read."""

    default_code = "MODEL_NOT_FOUND"


class FingerprintError(FabstirError):
    """An activation fingerprint is malformed, missing, or cannot be checked against this model."""

    default_code = "FINGERPRINT_MALFORMED"


class ProofError(FabstirError):
    """A checkpoint proof cannot be built, is malformed, or does not verify (codes ZK_UNAVAILABLE,
    ZK_KEYS_FAILED, PROOF_FAILED, PROOF_MALFORMED)."""

    default_code = "PROOF_ERROR"
