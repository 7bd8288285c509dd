"""Hosts as the NodeRegistry describes them, and the registry's key for a model.

Shared by the SDK's registry client, the node and the chain discovery source, so none of them has to
import another to name a host.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fabstir.chain.contracts import model_id
from fabstir.chain.metadata import HostMetadata
from fabstir.chain.records import HostRecord
from fabstir.errors import ConfigError

__all__ = ["HostInfo", "RegistryEvent", "resolve_model_id"]


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """A registered host with its validated metadata, or the reason its metadata was rejected."""

    record: HostRecord
    metadata: HostMetadata | None
    metadata_error: str | None

    @property
    def address(self) -> str:
        return self.record.address

    @property
    def api_url(self) -> str:
        return self.record.api_url


@dataclasses.dataclass(frozen=True)
class RegistryEvent:
    """One NodeRegistry event about a host (``name`` is the Solidity event name)."""

    name: str
    operator: str
    block_number: int
    args: dict[str, Any]


def resolve_model_id(model: bytes | str | None) -> bytes | None:
    """A model given as a 32-byte id, ``0x…`` hex, or ``"repo/file"`` becomes its registry id.

    Raises:
        ConfigError: the model is none of those forms.
    """
    if model is None or isinstance(model, bytes):
        if model is not None and len(model) != 32:
            raise ConfigError("a model id must be 32 bytes")
        return model
    if model.startswith("0x") and len(model) == 66:
        return bytes.fromhex(model[2:])
    repo, sep, file_name = model.rpartition("/")
    if not sep or not repo or not file_name:
        raise ConfigError(f"model must be a 32-byte id or 'repo/file', got {model!r}")
    return model_id(repo, file_name)
