"""The client SDK: ``FabstirSDK`` and its managers."""

from fabstir.sdk.client import FabstirSDK
from fabstir.sdk.config import RetryPolicy, Timeouts, backoff
from fabstir.sdk.connection import HostConnection, ws_url_for
from fabstir.sdk.inference import InferenceManager, InferenceStream
from fabstir.sdk.node_client import LLMNodeClient, NodeAnswer
from fabstir.sdk.session import Session
from fabstir.sdk.switching import SessionRoute
from fabstir.sdk.sync import SyncSDK
from fabstir.sdk.types import AnswerPart, HostSwitch, InferenceResult, PromptOptions, TokenCallback

__all__ = [
    "AnswerPart",
    "FabstirSDK",
    "HostConnection",
    "HostSwitch",
    "InferenceManager",
    "InferenceResult",
    "InferenceStream",
    "LLMNodeClient",
    "NodeAnswer",
    "PromptOptions",
    "RetryPolicy",
    "Session",
    "SessionRoute",
    "SyncSDK",
    "Timeouts",
    "TokenCallback",
    "backoff",
    "ws_url_for",
]
