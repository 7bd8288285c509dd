"""Signed host announcements: what a host says about itself to discovery sources.

Every discovery source other than the chain (the HTTP discovery service, mDNS,
the Kademlia DHT) carries the same signed record, so that whoever relays it
cannot change it. A record is a JSON object (camelCase keys)::

    {"v": 1, "host": "0x…", "apiUrl": "http://…", "models": ["repo/file", …],
     "pricePerToken": 2000, "capabilities": ["e2e", …], "region": "eu" | null,
     "signingKey": "<hex Ed25519 public key>", "issuedAt": <unix ms>, "ttl": <seconds>,
     "sig": "<hex Ed25519 signature>"}

``sig`` covers the canonical bytes (compact JSON, sorted keys, UTF-8) of every
other field. A record is valid from ``issuedAt`` (up to :data:`MAX_CLOCK_SKEW_MS`
early) until ``issuedAt + ttl`` seconds; a host keeps itself listed by re-signing
(a heartbeat). A record proves only that the holder of ``signingKey`` said it;
binding the key to the on-chain ``host`` address is the job of whoever reads the
chain (the registry's metadata carries ``ed25519PublicKey``).

Pure: callers pass the clock.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from nacl.signing import SigningKey

from fabstir.errors import RemoteProtocolError
from fabstir.protocol.signing import SignatureError, _verify, canonical_bytes

__all__ = [
    "ANNOUNCEMENT_VERSION",
    "AnnouncementError",
    "HostAnnouncement",
    "MAX_ANNOUNCEMENT_BYTES",
    "MAX_CLOCK_SKEW_MS",
    "MAX_TTL_S",
    "parse_announcement",
    "sign_announcement",
]

ANNOUNCEMENT_VERSION = 1
MAX_ANNOUNCEMENT_BYTES = 8 * 1024
"""Largest encoded record accepted (a record lists a few models and capabilities)."""
MAX_CLOCK_SKEW_MS = 60_000
"""How far in the future ``issuedAt`` may be before a record is refused."""
MAX_TTL_S = 24 * 3600
_MAX_ITEMS = 64
_MAX_TEXT = 512


class AnnouncementError(RemoteProtocolError):
    """A host announcement is malformed, expired or not yet valid (``code`` says which)."""

    default_code = "INVALID_ANNOUNCEMENT"


@dataclasses.dataclass(frozen=True, slots=True)
class HostAnnouncement:
    """A host's signed description of itself; build with :func:`sign_announcement`, read with :func:`parse_announcement`."""

    host: str
    api_url: str
    models: tuple[str, ...]
    price_per_token: int
    capabilities: tuple[str, ...]
    region: str | None
    signing_key: str
    issued_at_ms: int
    ttl_s: int
    signature: str

    @property
    def expires_at_ms(self) -> int:
        """Unix milliseconds after which the record is stale."""
        return self.issued_at_ms + self.ttl_s * 1000

    def is_expired(self, now_ms: int) -> bool:
        """Whether the record is past its TTL at ``now_ms``."""
        return now_ms >= self.expires_at_ms

    def unsigned(self) -> dict[str, Any]:
        """The signed fields, as on the wire."""
        return {
            "v": ANNOUNCEMENT_VERSION, "host": self.host, "apiUrl": self.api_url, "models": list(self.models),
            "pricePerToken": self.price_per_token, "capabilities": list(self.capabilities), "region": self.region,
            "signingKey": self.signing_key, "issuedAt": self.issued_at_ms, "ttl": self.ttl_s,
        }

    def to_wire(self) -> dict[str, Any]:
        """The record as a JSON object, signature included."""
        return {**self.unsigned(), "sig": self.signature}

    def to_json(self) -> str:
        """Compact JSON of :meth:`to_wire`."""
        return json.dumps(self.to_wire(), separators=(",", ":"), sort_keys=True)


def sign_announcement(key: SigningKey, *, host: str, api_url: str, now_ms: int, ttl_s: int = 60,
                      models: tuple[str, ...] | list[str] = (), price_per_token: int = 0,
                      capabilities: tuple[str, ...] | list[str] = (), region: str | None = None) -> HostAnnouncement:
    """A record signed by ``key``, issued at ``now_ms`` and valid for ``ttl_s`` seconds.

    Raises:
        AnnouncementError: when a field is out of range (the record would be refused on read).
    """
    record = HostAnnouncement(
        host=host, api_url=api_url, models=tuple(models), price_per_token=price_per_token,
        capabilities=tuple(sorted(set(capabilities))), region=region, signing_key=key.verify_key.encode().hex(),
        issued_at_ms=now_ms, ttl_s=ttl_s, signature="",
    )
    _check_fields(record.unsigned())
    signature = key.sign(canonical_bytes(record.unsigned())).signature.hex()
    return dataclasses.replace(record, signature=signature)


def parse_announcement(data: str | bytes | dict[str, Any], now_ms: int, *,
                       allow_expired: bool = False) -> HostAnnouncement:
    """Decode, validate and verify a record at ``now_ms``.

    Raises:
        AnnouncementError: code ``INVALID_ANNOUNCEMENT`` (malformed or too large), ``ANNOUNCEMENT_EXPIRED``
            (past its TTL, unless ``allow_expired``) or ``STALE_TIMESTAMP`` (issued in the future).
        SignatureError: code ``SIGNATURE_INVALID`` when ``sig`` does not verify under ``signingKey``.
    """
    if isinstance(data, (str, bytes)):
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            raise AnnouncementError(f"announcement exceeds {MAX_ANNOUNCEMENT_BYTES} bytes")
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            raise AnnouncementError("announcement is not JSON") from None
    else:
        obj = data
    if not isinstance(obj, dict):
        raise AnnouncementError("announcement must be a JSON object")
    signature = obj.get("sig")
    if not isinstance(signature, str):
        raise AnnouncementError("announcement has no 'sig'")
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    _check_fields(unsigned)
    if len(canonical_bytes(unsigned)) > MAX_ANNOUNCEMENT_BYTES:
        raise AnnouncementError(f"announcement exceeds {MAX_ANNOUNCEMENT_BYTES} bytes")
    try:
        _verify(unsigned["signingKey"], signature, canonical_bytes(unsigned))
    except SignatureError:
        raise SignatureError("announcement signature does not verify under its signingKey") from None
    record = HostAnnouncement(
        host=unsigned["host"], api_url=unsigned["apiUrl"], models=tuple(unsigned["models"]),
        price_per_token=unsigned["pricePerToken"], capabilities=tuple(unsigned["capabilities"]),
        region=unsigned["region"], signing_key=unsigned["signingKey"], issued_at_ms=unsigned["issuedAt"],
        ttl_s=unsigned["ttl"], signature=signature,
    )
    if record.issued_at_ms > now_ms + MAX_CLOCK_SKEW_MS:
        raise AnnouncementError("announcement is issued in the future", code="STALE_TIMESTAMP")
    if not allow_expired and record.is_expired(now_ms):
        raise AnnouncementError("announcement is past its TTL", code="ANNOUNCEMENT_EXPIRED")
    return record


_FIELDS = {"v", "host", "apiUrl", "models", "pricePerToken", "capabilities", "region", "signingKey", "issuedAt",
           "ttl"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise AnnouncementError(f"'{name}' must be a non-empty string of at most {_MAX_TEXT} characters")


def _text_list(value: object, name: str) -> None:
    if not isinstance(value, list) or len(value) > _MAX_ITEMS:
        raise AnnouncementError(f"'{name}' must be a list of at most {_MAX_ITEMS} strings")
    for item in value:
        _text(item, f"{name}[]")


def _check_fields(obj: dict[str, Any]) -> None:
    if set(obj) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(obj)), sorted(set(obj) - _FIELDS)
        raise AnnouncementError(f"announcement fields: missing {missing}, unknown {extra}")
    if obj["v"] != ANNOUNCEMENT_VERSION:
        raise AnnouncementError(f"unsupported announcement version {obj['v']!r}")
    host = obj["host"]
    if not isinstance(host, str) or len(host) != 42 or not host.startswith("0x"):
        raise AnnouncementError("'host' must be a 0x-prefixed 20-byte address")
    try:
        int(host[2:], 16)
    except ValueError:
        raise AnnouncementError("'host' must be a 0x-prefixed 20-byte address") from None
    _text(obj["apiUrl"], "apiUrl")
    if not obj["apiUrl"].startswith(("http://", "https://", "ws://", "wss://")):
        raise AnnouncementError("'apiUrl' must be an http(s) or ws(s) URL")
    _text_list(obj["models"], "models")
    _text_list(obj["capabilities"], "capabilities")
    if obj["region"] is not None:
        _text(obj["region"], "region")
    if not _is_int(obj["pricePerToken"]) or not 0 <= obj["pricePerToken"] < 2**256:
        raise AnnouncementError("'pricePerToken' must be a non-negative integer (base units)")
    key = obj["signingKey"]
    if not isinstance(key, str) or len(key) != 64:
        raise AnnouncementError("'signingKey' must be a 32-byte hex Ed25519 public key")
    if not _is_int(obj["issuedAt"]) or obj["issuedAt"] < 0:
        raise AnnouncementError("'issuedAt' must be unix milliseconds")
    if not _is_int(obj["ttl"]) or not 1 <= obj["ttl"] <= MAX_TTL_S:
        raise AnnouncementError(f"'ttl' must be 1..{MAX_TTL_S} seconds")
