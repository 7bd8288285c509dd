"""Pin the public API: adding or removing a name must be a deliberate change."""

from __future__ import annotations

import fabstir
import fabstir.errors
import fabstir.node
import fabstir.protocol
import fabstir.protocol.e2e
import fabstir.sdk


def test_top_level_names() -> None:
    assert set(fabstir.__all__) == {
        "AuthenticationError", "ChatTurn", "ConfigError", "ConnectError", "ConnectionClosedError", "EngineError", "FabstirError",
        "FabstirSDK", "InferenceManager", "InferenceResult", "InferenceStream", "InvalidMessageIndexError",
        "LocalProtocolError", "ModelNotFoundError", "NodeError", "PromptOptions", "ProtocolError",
        "RemoteProtocolError", "RequestTimeoutError", "RetryPolicy", "SessionError", "Timeouts",
        "TokenLimitExceededError", "TransportError", "Usage", "__version__",
    }


def test_every_exported_name_exists() -> None:
    for module in (fabstir, fabstir.errors, fabstir.node, fabstir.protocol, fabstir.protocol.e2e, fabstir.sdk):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_one_exception_tree() -> None:
    for name in fabstir.errors.__all__:
        assert issubclass(getattr(fabstir.errors, name), fabstir.FabstirError)
    assert issubclass(fabstir.RequestTimeoutError, TimeoutError)
    assert issubclass(fabstir.ModelNotFoundError, FileNotFoundError)


def test_protocol_is_sans_io() -> None:
    import ast
    from pathlib import Path

    forbidden = {"asyncio", "websockets", "starlette", "uvicorn", "httpx", "socket", "llama_cpp"}
    for path in Path(fabstir.protocol.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in forbidden for n in names), f"{path.name} imports {names}"
