"""Network files: where a chain is (JSON-RPC URL) and where the marketplace lives on it.

``fabstir devnet up`` writes one; host nodes and clients read it with ``--network FILE``.
The file is JSON: ``{"name", "rpc_url", "deployment": {...}, "accounts": {...}}`` (accounts only
on development networks).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fabstir.chain.backend import Chain
from fabstir.chain.contracts import Deployment
from fabstir.errors import ConfigError

__all__ = ["NetworkConfig", "PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "base-sepolia": {"name": "base-sepolia", "rpc_url": "https://sepolia.base.org", "chain_id": 84532},
    "base": {"name": "base", "rpc_url": "https://mainnet.base.org", "chain_id": 8453},
    "anvil": {"name": "anvil", "rpc_url": "http://127.0.0.1:8545", "chain_id": 31337},
}
"""Known networks. Our contracts have no public deployment yet: give their addresses in the file."""


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """A chain endpoint plus a marketplace deployment on it."""

    name: str
    rpc_url: str
    deployment: Deployment
    accounts: dict[str, str] = dataclasses.field(default_factory=dict)
    """Role name -> private key, for development networks only."""
    anvil_pid: int | None = None
    """PID of the local anvil that ``fabstir devnet up`` started (``devnet down`` stops it)."""
    anvil_port: int | None = None
    """Its port on 127.0.0.1."""
    anvil_log: str | None = None
    """Its log file."""

    @classmethod
    def load(cls, path: str | Path) -> NetworkConfig:
        """Read a network file; ``"preset": "base-sepolia"`` fills in name and RPC URL.

        Raises:
            ConfigError: unreadable, missing the RPC URL or deployment, or a value of the wrong type
                (code ``INVALID_NETWORK_FILE``).
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read network file {path}: {exc}", code="INVALID_NETWORK_FILE") from None
        if not isinstance(data, dict):
            raise ConfigError(f"network file {path} must hold a JSON object", code="INVALID_NETWORK_FILE")
        preset = PRESETS.get(str(data.get("preset", "")), {})
        merged = {**preset, **data}
        if "rpc_url" not in merged or "deployment" not in merged:
            raise ConfigError(f"network file {path} needs 'rpc_url' and 'deployment'", code="INVALID_NETWORK_FILE")
        _check_shape(path, merged)
        deployment = Deployment.from_dict({"chain_id": merged.get("chain_id"), **merged["deployment"]})
        optional = {key: merged[key] for key in ("anvil_pid", "anvil_port", "anvil_log") if merged.get(key) is not None}
        return cls(name=str(merged.get("name", "custom")), rpc_url=str(merged["rpc_url"]), deployment=deployment,
                   accounts=dict(merged.get("accounts", {})), **optional)

    def save(self, path: str | Path) -> None:
        data = {"name": self.name, "rpc_url": self.rpc_url, "chain_id": self.deployment.chain_id,
                "deployment": self.deployment.to_dict(), "accounts": self.accounts}
        for key in ("anvil_pid", "anvil_port", "anvil_log"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def connect(self) -> Chain:
        return Chain.connect(self.rpc_url)


_TOP_LEVEL_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"), "rpc_url": ((str,), "a string"), "chain_id": ((int,), "an integer"),
    "accounts": ((dict,), "an object"), "anvil_pid": ((int, type(None)), "an integer"),
    "anvil_port": ((int, type(None)), "an integer"), "anvil_log": ((str, type(None)), "a string"),
}
_FIELD_TYPES: dict[Any, tuple[type, str]] = {int: (int, "an integer"), "int": (int, "an integer"),
                                              str: (str, "a string"), "str": (str, "a string")}


def _check_shape(path: str | Path, merged: dict[str, Any]) -> None:
    """Refuse a network file whose values have the wrong JSON types, naming the first bad key."""

    def bad(key: str, wanted: str) -> ConfigError:
        return ConfigError(f"network file {path}: {key!r} must be {wanted}", code="INVALID_NETWORK_FILE")

    for key, (kinds, wanted) in _TOP_LEVEL_TYPES.items():
        value = merged.get(key)
        if key in merged and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise bad(key, wanted)
    if not merged["rpc_url"]:
        raise bad("rpc_url", "a non-empty string")
    accounts = merged.get("accounts", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in accounts.items()):
        raise bad("accounts", "an object of name -> private key strings")
    deployment = merged["deployment"]
    if not isinstance(deployment, dict):
        raise bad("deployment", "an object of contract addresses")
    if "chain_id" not in merged and "chain_id" not in deployment:
        raise bad("chain_id", "given (an integer), or a known 'preset'")
    for field in dataclasses.fields(Deployment):
        if field.name not in deployment or field.type not in _FIELD_TYPES:
            continue  # missing fields are named by Deployment.from_dict
        kind, wanted = _FIELD_TYPES[field.type]
        value = deployment[field.name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise bad(f"deployment.{field.name}", wanted)
