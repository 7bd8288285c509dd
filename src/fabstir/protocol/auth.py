"""JWT session auth bound to the depositor (our extension ``jwt-auth``).

Exchange (all JSON frames on ``/v1/ws``):

1. client ``auth_challenge {job_id}`` → node ``auth_challenge {job_id, challenge, expires_at}``;
2. client ``auth {job_id, challenge, signature, permissions?}``: ``signature`` is the depositor's
   Ethereum ``personal_sign`` (EIP-191) of the challenge text. The node recovers the signer, checks
   on chain that it is the job's depositor, and answers ``auth_success {token, expires_at, permissions}``:
   an EdDSA JWT signed by the host's Ed25519 key with ``session_id``, ``job_id``, ``permissions``,
   ``sub`` (depositor), ``iss`` (host), ``iat`` and ``exp``;
3. later connections present ``auth {token}`` instead of a signature; ``token_refresh {token}`` returns
   a fresh token while the old one is still valid (no new signature needed).

The challenge names the chain, the marketplace, the job and the host, so a signature cannot be
replayed to another host or job; it expires after ``CHALLENGE_TTL`` seconds and is single-use.
Pure functions: callers pass the time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import SigningKey

from fabstir.errors import RemoteProtocolError

__all__ = [
    "AuthError",
    "CHALLENGE_TTL",
    "PERMISSIONS",
    "TokenClaims",
    "challenge_text",
    "decode_token",
    "issue_token",
    "recover_signer",
    "sign_challenge",
]

CHALLENGE_TTL = 300
PERMISSIONS = ("prompt", "read_history", "admin")
"""``prompt``: send prompts; ``read_history``: read the node's copy of the conversation; ``admin``: host only."""


class AuthError(RemoteProtocolError):
    """Authentication refused: AUTH_FAILED, SESSION_EXPIRED or PERMISSION_DENIED."""

    default_code = "AUTH_FAILED"


@dataclasses.dataclass(frozen=True, slots=True)
class TokenClaims:
    session_id: str
    job_id: int
    permissions: tuple[str, ...]
    subject: str
    issuer: str
    issued_at: int
    expires_at: int


def challenge_text(*, chain_id: int, marketplace: str, job_id: int, host: str, nonce: str, expires_at: int) -> str:
    """The text the depositor signs."""
    return (f"fabstir session auth v1\nchain: {chain_id}\nmarketplace: {marketplace.lower()}\njob: {job_id}\n"
            f"host: {host.lower()}\nnonce: {nonce}\nexpires: {expires_at}")


def sign_challenge(text: str, private_key: Any) -> str:
    """The depositor's EIP-191 signature of ``text`` (hex), as a wallet's ``personal_sign`` makes it."""
    signed = Account.sign_message(encode_defunct(text=text), private_key)
    return "0x" + bytes(signed.signature).hex()


def recover_signer(text: str, signature: str) -> str:
    """The address that signed ``text``.

    Raises:
        AuthError: the signature is malformed.
    """
    try:
        return str(Account.recover_message(encode_defunct(text=text), signature=bytes.fromhex(
            signature.removeprefix("0x"))))
    except Exception:  # eth_account raises several types for bad signatures
        raise AuthError("the challenge signature is invalid") from None


def _private(key: SigningKey) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(key))


def issue_token(key: SigningKey, claims: TokenClaims) -> str:
    """An EdDSA JWT carrying ``claims``, signed by the host's Ed25519 key."""
    payload = {"session_id": claims.session_id, "job_id": claims.job_id, "permissions": list(claims.permissions),
               "sub": claims.subject, "iss": claims.issuer, "iat": claims.issued_at, "exp": claims.expires_at}
    return jwt.encode(payload, _private(key), algorithm="EdDSA")


def decode_token(token: str, public_key_hex: str, now: int) -> TokenClaims:
    """Verify a token signed by ``public_key_hex`` and return its claims.

    Raises:
        AuthError: SESSION_EXPIRED past ``exp``; AUTH_FAILED when forged, signed by another key, or malformed.
    """
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        payload = jwt.decode(token, public, algorithms=["EdDSA"], options={"verify_exp": False,
                                                                           "require": ["exp", "job_id"]})
    except (jwt.InvalidTokenError, ValueError) as exc:
        raise AuthError(f"token rejected: {type(exc).__name__}") from None
    try:
        claims = TokenClaims(session_id=str(payload["session_id"]), job_id=int(payload["job_id"]),
                             permissions=tuple(str(p) for p in payload["permissions"]),
                             subject=str(payload["sub"]), issuer=str(payload["iss"]),
                             issued_at=int(payload["iat"]), expires_at=int(payload["exp"]))
    except (KeyError, TypeError, ValueError):
        raise AuthError("token lacks fabstir claims") from None
    if now >= claims.expires_at:
        raise AuthError("token expired; refresh it or authenticate again", code="SESSION_EXPIRED")
    return claims
