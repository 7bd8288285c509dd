"""Typed node configuration with a documented precedence.

Precedence, lowest to highest: built-in defaults < TOML file (``[node]``
table or top level; a ``.json`` network file written by ``fabstir devnet up`` sets ``network``) < environment variables ``FABSTIR_NODE_<FIELD>`` (e.g.
``FABSTIR_NODE_PORT=9000``) < explicit overrides (command-line flags).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fabstir.errors import ConfigError
from fabstir.node.engines.templates import TEMPLATES
from fabstir.protocol import DEFAULT_MAX_FRAME_BYTES

__all__ = ["NodeConfig", "load_node_config", "check_host_key", "ENV_PREFIX", "ENGINES"]

ENV_PREFIX = "FABSTIR_NODE_"
ENGINES = ("llama", "llama-batch", "openai")


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a host node needs to start."""

    host: str = "127.0.0.1"
    """Address to bind; loopback by default."""
    port: int = 8080
    """TCP port for HTTP and ``/v1/ws``; 0 picks a free one."""
    model_path: str | None = None
    """GGUF file to serve; ``None`` uses the default model package (Gemma 3 270M). With ``engine = "openai"``:
    the model's name on the upstream server (also the file part of its on-chain id)."""
    engine: str = "llama"
    """``llama``: llama.cpp in this process, one context per answer in flight; ``llama-batch``: llama.cpp in this
    process, one context decoding every answer in flight together (continuous batching); ``openai``: forward to
    the OpenAI-compatible server at :attr:`upstream` (vLLM, llama-server, Ollama, SGLang, llama_cpp.server)."""
    upstream: str | None = None
    """Base URL of the upstream server for ``engine = "openai"`` (e.g. ``http://127.0.0.1:8000``)."""
    model_id: str | None = None
    """Name clients use for the model; defaults to the file's stem."""
    template: str = "plain"
    """Prompt template: plain, raw, chatml or gemma."""
    context_window: int = 2048
    """Tokens of context per engine (prompt plus completion)."""
    parallel: int = 2
    """Responses generated at the same time: engine instances, or with ``llama-batch`` the sequences decoded together
    (its KV cache holds ``context_window * parallel`` tokens)."""
    threads: int | None = None
    """CPU threads per engine; ``None`` uses all cores."""
    flash_attention: bool = False
    """``llama-batch`` only: llama.cpp's flash attention (faster batched decoding, as ``llama-server`` uses by default;
    greedy answers may then differ in rare near-ties from the ``llama`` engine's)."""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """Largest WebSocket frame accepted; larger ones get FRAME_TOO_LARGE."""
    max_sessions: int = 10_000
    """Sessions whose context is kept in memory (least recently used are dropped)."""
    extensions: bool = True
    """Serve our protocol extensions; ``False`` behaves exactly like the public node's subset."""
    ws_compression: bool = True
    """Offer RFC 7692 permessage-deflate on ``/v1/ws``."""
    repeat_penalty: float = 1.1
    """Penalty on recently generated tokens (1.0 turns it off; the public node uses 1.1)."""
    rate_limit_per_minute: int = 1200
    """Prompts per minute per client address (0: no limit)."""
    rate_limit_burst: int = 200
    """Prompts a client may send at once before the per-minute rate applies."""
    session_rate_limit_per_minute: int = 120
    """Prompts per minute per session (0: no limit)."""
    session_rate_limit_burst: int = 20
    max_concurrent_per_client: int = 4
    """Answers one client address may have generating or queued at once; more get TOO_MANY_REQUESTS (0: no cap)."""
    require_auth: bool = True
    """Kept for old configuration files: a paid node always requires the depositor's authentication, unless
    :attr:`insecure_serve_without_depositor_auth` says otherwise (``False`` here is refused)."""
    insecure_serve_without_depositor_auth: bool = False
    """INSECURE: serve a paid session to anyone who names its job id (no JWT, no signed encrypted init), so
    strangers can spend depositors' deposits and read their conversations. For closed test networks only."""
    auth_token_ttl: int = 900
    """Seconds a session token is valid (refreshable before it expires)."""
    require_signed_messages: bool = False
    """Refuse client messages without a valid Ed25519 ``sig`` (timestamp window 60 s, nonces not reusable)."""
    signing_key_file: str | None = None
    """Ed25519 key that signs receipts (created 0600 if missing); ``None``: a new key per run."""
    network: str | None = None
    """Network file (``fabstir devnet up`` writes one): serve paid sessions on that chain."""
    host_key: str | None = dataclasses.field(default=None, repr=False)
    """The host's Ethereum private key (hex); better given as ``FABSTIR_NODE_HOST_KEY``.

    It is also the node's end-to-end encryption key (secp256k1, as on the public node). A paid node uses its
    billing account's key; a free node without ``host_key`` uses a new random key per run."""
    encryption: bool = True
    """Serve end-to-end encrypted sessions (``encrypted_session_init``); ``False`` answers
    ENCRYPTION_NOT_SUPPORTED, as a public node without ``HOST_PRIVATE_KEY`` does."""
    model_repo: str = "local"
    """With the model file's name, gives the on-chain model id ``keccak256(repo/file)``."""
    checkpoint_tokens: int = 1000
    """Submit a checkpoint every this many tokens (and at the end of a response)."""
    ledger_path: str | None = None
    """SQLite file of the node's billing; default ``~/.local/share/fabstir/ledger-<address>.db``."""
    checkpoint_proofs: bool = False
    """Prove every checkpoint with the EZKL circuit and submit the proof (issue 14 P3; needs the ``proofs``
    extra and a marketplace with a checkpoint verifier). Proofs and their history go next to the ledger."""
    zk_cache: str | None = None
    """Where the circuit's keys are built once (default ``$FABSTIR_ZK_CACHE`` or ``~/.cache/fabstir/zk``)."""
    seed: int = 0
    """Sampling seed (same seed, prompt and temperature give the same text)."""
    discovery_url: str | None = None
    """HTTP discovery service to announce this node to (signed record, re-signed every ``announce_ttl / 3`` s)."""
    announce_mdns: bool = False
    """Announce this node over mDNS on ``mdns_interface`` (loopback by default)."""
    mdns_interface: str = "127.0.0.1"
    """Interface address for mDNS; only loopback unless you mean to reach a real LAN."""
    dht_bootstrap: str | None = None
    """Join the Kademlia DHT through these ``host:port`` nodes (comma-separated) and announce there."""
    dht_port: int = 0
    """UDP port of this node's DHT peer on 127.0.0.1 (0 picks a free one); set alone, the node is a DHT seed
    that others bootstrap from."""
    announce_ttl: int = 60
    """Seconds an announcement stays valid; heartbeats re-sign it three times per TTL."""
    announce_price: int = 0
    """Price per token (x1000, base units) to announce; a registered host's on-chain price wins anyway."""
    announce_region: str | None = None
    """Region to announce (free text, e.g. ``eu-west``)."""
    public_url: str | None = None
    """URL clients should use, when it is not the bound address (behind a proxy)."""
    request_read_timeout: float = 30.0
    """Seconds a connection may take to send a request head (or WebSocket handshake) and a request its body;
    slower ones get 408 REQUEST_TIMEOUT and are closed."""
    ws_idle_timeout: float = 300.0
    """Seconds a WebSocket may pass with no message either way before it is closed (1001 IDLE_TIMEOUT; 0: never)."""
    max_connections_per_address: int = 64
    """Open connections (HTTP and WebSocket) one client address may hold; more are refused with 503
    TOO_MANY_CONNECTIONS or WebSocket close 1013 (0: no cap)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose {', '.join(ENGINES)}")
        if self.engine == "openai" and (not self.upstream or not self.model_path):
            raise ConfigError("engine openai needs --upstream URL and --model NAME (the upstream's model)",
                              code="UPSTREAM_REQUIRED")
        if self.template not in TEMPLATES:
            raise ConfigError(f"unknown template {self.template!r}; choose one of {', '.join(TEMPLATES)}")
        for name in ("context_window", "parallel", "max_frame_bytes", "max_sessions", "checkpoint_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if not 1 <= self.announce_ttl <= 86_400:
            raise ConfigError("announce_ttl must be 1..86400 seconds")
        if not 0 <= self.dht_port <= 65535:
            raise ConfigError(f"dht_port must be 0-65535, got {self.dht_port}")
        if self.max_concurrent_per_client < 0:
            raise ConfigError("max_concurrent_per_client must be non-negative (0: no cap)")
        if self.announce_price < 0:
            raise ConfigError("announce_price must be non-negative")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be at least 1")
        self._check_limits()
        if self.host_key:
            check_host_key(self.host_key)
        if not self.require_auth:
            raise ConfigError("require_auth can no longer be switched off; to serve paid sessions without the "
                              "depositor's authentication set insecure_serve_without_depositor_auth (test "
                              "networks only)", code="INSECURE_SETTING_RENAMED")

    def _check_limits(self) -> None:
        if not 0 < self.request_read_timeout <= 3600 or not math.isfinite(self.request_read_timeout):
            raise ConfigError("request_read_timeout must be more than 0 and at most 3600 seconds")
        if not 0 <= self.ws_idle_timeout < math.inf:
            raise ConfigError("ws_idle_timeout must be a non-negative number of seconds (0: no limit)")
        if self.max_connections_per_address < 0:
            raise ConfigError("max_connections_per_address must be non-negative (0: no cap)")


_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def check_host_key(key: str) -> None:
    """Refuse a host key that is not 32 bytes of hex (``0x`` optional) or not a valid secp256k1 key.

    The message never repeats the key.

    Raises:
        ConfigError: with code ``INVALID_HOST_KEY``.
    """
    digits = key.strip().removeprefix("0x").removeprefix("0X")
    if len(digits) != 64 or not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise ConfigError(f"host_key must be 64 hex digits (32 bytes, 0x optional); got {len(digits)} characters",
                          code="INVALID_HOST_KEY")
    if not 0 < int(digits, 16) < _SECP256K1_ORDER:
        raise ConfigError("host_key is not a valid secp256k1 private key (zero or not below the curve order)",
                          code="INVALID_HOST_KEY")


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}


def load_node_config(
    file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Build a :class:`NodeConfig` from file, environment and overrides (in that order).

    ``None`` values in ``overrides`` mean "not given" and are skipped.

    Raises:
        ConfigError: unreadable file, unknown key, or a value of the wrong type.
    """
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_read_file(Path(file)))
    environ = os.environ if env is None else env
    for name in _FIELDS:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown node setting(s): {', '.join(sorted(unknown))}")
    return NodeConfig(**{name: _coerce(name, value) for name, value in values.items()})


def _read_file(path: Path) -> dict[str, Any]:
    if path.suffix == ".json":  # a network file (fabstir devnet up): serve paid sessions on that chain
        return {"network": str(path)}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    table = data.get("node", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [node] must be a table")
    return table


def _coerce(name: str, value: Any) -> Any:
    kind = str(_FIELDS[name].type)
    base, optional = kind.removesuffix(" | None"), kind.endswith(" | None")
    if isinstance(value, str) and base != "str":
        text = value.strip()
        if optional and text.lower() in ("", "none"):
            return None
        try:
            if base == "int":
                return int(text)
            if base == "float":
                return float(text)
            if base == "bool":
                return _parse_bool(text)
        except ValueError:
            raise ConfigError(f"{name}: cannot parse {value!r} as {kind}") from None
    if base not in ("int", "float", "bool", "str"):
        return value
    if isinstance(value, bool):
        ok = base == "bool"
    elif isinstance(value, int):
        ok = base in ("int", "float")
    else:
        ok = (base == "float" and isinstance(value, float)) or (base == "str" and isinstance(value, str))
    if not ok:
        raise ConfigError(f"{name}: expected {kind}, got {value!r}")
    return float(value) if base == "float" else value


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)
