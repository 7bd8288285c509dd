"""Host metadata: the JSON a host publishes in the NodeRegistry, and its schema.

The chain stores metadata as an opaque string. Clients validate it against
:data:`HOST_METADATA_SCHEMA`; a host whose metadata is malformed is reported
with the reason, never fatal to discovery. Unknown keys are allowed (the public
node writes ``hardware``, ``performance_tier`` and others).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jsonschema
import jsonschema.exceptions

from fabstir.errors import FabstirError

__all__ = ["HOST_METADATA_SCHEMA", "HostMetadata", "MetadataError", "build_host_metadata", "parse_host_metadata"]

MAX_METADATA_BYTES = 16_384

HOST_METADATA_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Fabstir host metadata",
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "version": {"type": "string", "maxLength": 64},
        "description": {"type": "string", "maxLength": 2000},
        "location": {"type": "string", "maxLength": 200},
        "region": {"type": "string", "maxLength": 64},
        "publicKey": {"type": "string", "pattern": "^(0x)?(02|03)[0-9a-fA-F]{64}$"},
        "ed25519PublicKey": {"type": "string", "pattern": "^(0x)?[0-9a-fA-F]{64}$"},
        "models": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 256},
        "capabilities": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 64},
        "maxConcurrentJobs": {"type": "integer", "minimum": 1},
    },
}
"""JSON Schema (draft 2020-12) every host's metadata must satisfy."""


class MetadataError(FabstirError, ValueError):
    """A host's metadata is not valid JSON or does not match the schema."""

    default_code = "INVALID_METADATA"


@dataclasses.dataclass(frozen=True)
class HostMetadata:
    """Validated host metadata (the raw object is kept in ``extra`` for unknown keys)."""

    name: str
    version: str | None = None
    description: str | None = None
    location: str | None = None
    region: str | None = None
    public_key: str | None = None
    """Compressed secp256k1 public key (hex) for end-to-end encryption."""
    signing_key: str | None = None
    """Ed25519 public key (hex) that signs the host's receipts."""
    models: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@functools.cache
def _validator() -> Any:
    # Checking the schema itself and building a validator costs milliseconds: done once, not per host.
    jsonschema.Draft202012Validator.check_schema(HOST_METADATA_SCHEMA)
    return jsonschema.Draft202012Validator(HOST_METADATA_SCHEMA)


def parse_host_metadata(text: str) -> HostMetadata:
    """Validate ``text`` against the schema.

    Raises:
        MetadataError: with the reason (invalid JSON, too large, or the first schema violation).
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise MetadataError(f"metadata exceeds {MAX_METADATA_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MetadataError(f"metadata is not JSON: {exc}") from None
    try:
        error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
        if error is not None:
            raise error
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise MetadataError(f"metadata {where}: {exc.message}") from None
    known = {"name", "version", "description", "location", "region", "publicKey", "ed25519PublicKey", "models",
             "capabilities"}
    return HostMetadata(
        name=data["name"], version=data.get("version"), description=data.get("description"),
        location=data.get("location"), region=data.get("region"), public_key=data.get("publicKey"),
        signing_key=data.get("ed25519PublicKey"),
        models=tuple(data.get("models", ())), capabilities=tuple(data.get("capabilities", ())),
        extra={k: v for k, v in data.items() if k not in known},
    )


def build_host_metadata(name: str, **fields: Any) -> str:
    """Compact JSON metadata for ``registerNode``; validated before it is returned.

    Keyword names are the JSON keys (``publicKey=...``, ``models=[...]``); ``None`` values are left out.
    """
    text = json.dumps({"name": name, **{k: v for k, v in fields.items() if v is not None}}, separators=(",", ":"))
    parse_host_metadata(text)
    return text
