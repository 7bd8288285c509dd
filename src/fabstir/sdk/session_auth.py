"""JWT session auth for a :class:`~fabstir.sdk.session.Session` (plan 11.5), as exchanges on its connection.

The host offers ``jwt-auth``; the depositor proves it owns the job: ``auth_challenge`` →
``auth_challenge`` (a nonce) → ``auth`` with the nonce signed by the account (EIP-191) →
``auth_success`` (an EdDSA JWT and its expiry). The token is then presented again on a new
connection, and exchanged for a fresh one (``token_refresh``) before it expires. Each step is
one request on the session's :class:`~fabstir.protocol.client_connection.ClientConnection`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fabstir.errors import SessionError
from fabstir.protocol import AuthChallenge, AuthChallengeRequest, AuthRequest, AuthSuccess, Feature, TokenRefresh
from fabstir.protocol.auth import sign_challenge
from fabstir.sdk.streaming import new_request_id

if TYPE_CHECKING:
    from fabstir.sdk.session import Session

__all__ = ["TOKEN_REFRESH_MARGIN", "authenticate", "authenticate_if_offered", "refresh_if_expiring", "refresh_token"]

TOKEN_REFRESH_MARGIN = 60
"""Refresh the session token when it has less than this many seconds left."""


async def authenticate(session: Session, permissions: Sequence[str] = ("prompt", "read_history")) -> AuthSuccess:
    """Prove to the host that the SDK's account is the job's depositor; keeps the session token.

    Raises:
        ConfigError: no account configured.
        SessionError: JOB_REQUIRED (the session has no job id).
        AuthenticationError: the host refused (AUTH_FAILED, PERMISSION_DENIED).
    """
    account = session.sdk.require_account()
    job_id = session.job_id
    if job_id is None:
        raise SessionError("authentication needs the session's job id", code="JOB_REQUIRED")
    challenge = await session.request(AuthChallengeRequest(job_id, session.wire_session_id, new_request_id()),
                                      AuthChallenge)
    signature = sign_challenge(challenge.challenge, account.key)
    return await _store_token(session, AuthRequest(job_id=job_id, session_id=session.wire_session_id,
                                                   challenge=challenge.challenge, signature=signature,
                                                   permissions=tuple(permissions), request_id=new_request_id()))


async def refresh_token(session: Session) -> AuthSuccess:
    """Exchange the still-valid session token for a fresh one (no new signature).

    Raises:
        SessionError: AUTH_FAILED (no token yet).
    """
    if session.token is None:
        raise SessionError("no session token to refresh; call authenticate_session", code="AUTH_FAILED")
    return await _store_token(session, TokenRefresh(session.token, new_request_id()))


async def _store_token(session: Session, request: AuthRequest | TokenRefresh) -> AuthSuccess:
    success = await session.request(request, AuthSuccess)
    session.token, session.token_expires_at = success.token, success.expires_at
    return success


async def authenticate_if_offered(session: Session) -> None:
    """Authenticate (or re-present the token) when the host offers JWT auth and we can."""
    job_id = session.job_id
    if Feature.JWT_AUTH not in session.features or job_id is None or session.sdk.account is None:
        return
    if session.token is not None and session.token_expires_at > time.time() + 5:
        await _store_token(session, AuthRequest(job_id=job_id, session_id=session.wire_session_id, token=session.token,
                                                request_id=new_request_id()))
        return
    await authenticate(session)


async def refresh_if_expiring(session: Session) -> None:
    """Refresh the token when it has less than :data:`TOKEN_REFRESH_MARGIN` seconds left."""
    if session.token is not None and session.token_expires_at - time.time() < TOKEN_REFRESH_MARGIN:
        await refresh_token(session)
