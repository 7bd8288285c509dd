"""The node's side of JWT session auth: challenges, depositor checks on chain, tokens, grants.

See :mod:`fabstir.protocol.auth` for the exchange. A paid node serves a
session only to its depositor (see :mod:`fabstir.node.admission`), so someone who
merely knows the job id cannot spend the deposit.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

from nacl.signing import SigningKey
from web3 import Web3

from fabstir.node.billing import BillingService
from fabstir.node.host_chain import JobRefusedError
from fabstir.protocol import AuthChallenge, AuthChallengeRequest, AuthRequest, AuthSuccess, TokenRefresh
from fabstir.protocol.auth import (
    CHALLENGE_TTL,
    PERMISSIONS,
    AuthError,
    TokenClaims,
    challenge_text,
    decode_token,
    issue_token,
    recover_signer,
)

__all__ = ["Grants", "NodeAuthenticator"]


class Grants:
    """What one connection is authenticated for: job id -> token claims."""

    def __init__(self) -> None:
        self._claims: dict[int, TokenClaims] = {}

    def add(self, claims: TokenClaims) -> None:
        self._claims[claims.job_id] = claims

    def holds(self, job_id: int) -> bool:
        """Whether a token for ``job_id`` was presented (valid or not now)."""
        return job_id in self._claims

    def __bool__(self) -> bool:
        return bool(self._claims)

    def require(self, job_id: int | None, permission: str, now: int | None = None) -> TokenClaims:
        """The grant for ``job_id`` if it allows ``permission`` now.

        Raises:
            AuthError: AUTH_REQUIRED (not authenticated for the job), SESSION_EXPIRED, PERMISSION_DENIED.
        """
        claims = self._claims.get(job_id) if job_id is not None else None
        if claims is None:
            raise AuthError(f"authenticate for job {job_id} first (auth_challenge, then auth)",
                            code="AUTH_REQUIRED")
        if (now if now is not None else int(time.time())) >= claims.expires_at:
            raise AuthError("the session token expired; refresh it", code="SESSION_EXPIRED")
        if permission not in claims.permissions:
            raise AuthError(f"the session token does not allow {permission!r}", code="PERMISSION_DENIED")
        return claims


class NodeAuthenticator:
    """Issues challenges and tokens for one node."""

    def __init__(self, signing_key: SigningKey, billing: BillingService | None, *, token_ttl: int = 900,
                 max_challenges: int = 10_000) -> None:
        self._key = signing_key
        self._billing = billing
        self.token_ttl = token_ttl
        self._challenges: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._max = max_challenges

    @property
    def public_key(self) -> str:
        return self._key.verify_key.encode().hex()

    def _require_chain(self) -> BillingService:
        if self._billing is None:
            raise AuthError("this node has no chain to check depositors against", code="AUTH_UNAVAILABLE")
        return self._billing

    def challenge(self, request: AuthChallengeRequest) -> AuthChallenge:
        billing = self._require_chain()
        expires = int(time.time()) + CHALLENGE_TTL
        market = billing.host.market
        text = challenge_text(chain_id=market.chain.chain_id, marketplace=market.marketplace.address,
                              job_id=request.job_id, host=billing.host.address, nonce=secrets.token_hex(16),
                              expires_at=expires)
        self._challenges[text] = (request.job_id, expires)
        while len(self._challenges) > self._max:
            self._challenges.popitem(last=False)
        return AuthChallenge(job_id=request.job_id, challenge=text, expires_at=expires, request_id=request.request_id)

    async def authenticate(self, request: AuthRequest, session_id: str) -> tuple[AuthSuccess, TokenClaims]:
        """Check a signed challenge (or a token) and issue a token.

        Raises:
            AuthError: bad, expired or reused challenge; a signer who is not the depositor; a forged,
                foreign or expired token; elevated permissions the signer may not have.
        """
        now = int(time.time())
        if request.token is not None:
            claims = decode_token(request.token, self.public_key, now)
            if claims.job_id != request.job_id:
                raise AuthError("the token is for another job")
            return self._success(claims, request.request_id), claims
        billing = self._require_chain()
        pending = self._challenges.pop(request.challenge or "", None)  # single use
        if pending is None or pending[0] != request.job_id or pending[1] < now:
            raise AuthError("unknown, expired or already used challenge")
        signer = recover_signer(request.challenge or "", request.signature or "")
        try:
            job = await billing.host.verify_job(request.job_id)
        except JobRefusedError as exc:  # no such job, settled, another host's, another model
            raise AuthError(exc.message, code=exc.code) from None
        is_host = Web3.to_checksum_address(signer) == Web3.to_checksum_address(billing.host.address)
        if Web3.to_checksum_address(signer) != Web3.to_checksum_address(job.depositor) and not is_host:
            raise AuthError(f"{signer} is not the depositor of job {request.job_id}")
        permissions = tuple(p for p in request.permissions if p in PERMISSIONS) or ("prompt",)
        if "admin" in permissions and not is_host:
            raise AuthError("only the host may hold 'admin'", code="PERMISSION_DENIED")
        claims = TokenClaims(session_id=session_id, job_id=request.job_id, permissions=permissions, subject=signer,
                             issuer=billing.host.address, issued_at=now, expires_at=now + self.token_ttl)
        return self._success(claims, request.request_id), claims

    def refresh(self, request: TokenRefresh) -> tuple[AuthSuccess, TokenClaims]:
        """A new token with a new expiry for a still-valid one."""
        now = int(time.time())
        old = decode_token(request.token, self.public_key, now)
        claims = TokenClaims(session_id=old.session_id, job_id=old.job_id, permissions=old.permissions,
                             subject=old.subject, issuer=old.issuer, issued_at=now, expires_at=now + self.token_ttl)
        return self._success(claims, request.request_id), claims

    def _success(self, claims: TokenClaims, request_id: str | None) -> AuthSuccess:
        return AuthSuccess(token=issue_token(self._key, claims), expires_at=claims.expires_at,
                           permissions=claims.permissions, job_id=claims.job_id, session_id=claims.session_id,
                           request_id=request_id)
