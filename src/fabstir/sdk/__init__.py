"""The client SDK: ``FabstirSDK`` and its managers."""

from fabstir.sdk.client import FabstirSDK
from fabstir.sdk.config import RetryPolicy, Timeouts, backoff
from fabstir.sdk.connection import HostConnection, ws_url_for
from fabstir.sdk.inference import InferenceManager, InferenceStream
from fabstir.sdk.session import Session
from fabstir.sdk.types import InferenceResult, PromptOptions, TokenCallback

__all__ = [
    "FabstirSDK",
    "HostConnection",
    "InferenceManager",
    "InferenceResult",
    "InferenceStream",
    "PromptOptions",
    "RetryPolicy",
    "Session",
    "Timeouts",
    "TokenCallback",
    "backoff",
    "ws_url_for",
]
