"""The one admission step every serving path goes through (WebSocket, encrypted WebSocket, HTTP JSON and SSE).

Theory of operation. A request reaches the engine only through :meth:`Admission.admit`,
which answers "may this caller spend this job's deposit?" from what the caller proved:

- A node without a chain (free mode) admits everyone; there is nothing to pay.
- On a paid node the request must name a job (``JOB_REQUIRED``); the job must exist, be
  active, belong to this host and name its model (``JOB_NOT_FOUND``, ``JOB_NOT_ACTIVE``,
  ``WRONG_HOST``, ``MODEL_MISMATCH``); and the caller must be its depositor: a session
  token (JWT) for the job with the needed permission, or an address proven by the channel
  itself (the signer of the encrypted session init that keyed this very session, over our
  digest or the public TypeScript SDK's). Without either the answer is ``AUTH_REQUIRED``;
  with proof of someone else, ``AUTH_FAILED``. Only the explicitly named
  ``insecure_serve_without_depositor_auth`` setting skips this check.

Session data (server-side history, resume, ``get_history``) is kept under an *owner key*:
the depositor's address on a paid node; on a free node the signer of the encrypted init, or
else the connection's own random secret (handed to the opener as ``session_secret``, so the
opener alone can come back to it from another connection). Someone who merely knows a
session id therefore reaches a context of their own, never the opener's.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time

from web3 import Web3

from fabstir.chain.records import SessionJob
from fabstir.node.auth import Grants
from fabstir.node.billing import BillingService
from fabstir.node.config import NodeConfig
from fabstir.node.host_chain import JobRefusedError
from fabstir.protocol import ErrorCode
from fabstir.protocol.auth import AuthError
from fabstir.protocol.parse import job_id_from_text

__all__ = ["AdmittedJob", "Admission", "Caller", "new_owner_secret", "job_id_from_session"]

log = logging.getLogger("fabstir.node.admission")

_DEPOSITOR_PERMISSIONS = ("prompt", "read_history")
"""What a depositor proven by a signed encrypted init may do (``admin`` needs the host's token)."""

JOB_CACHE_SECONDS = 5.0
"""How long a job read from chain is trusted before it is read again (a settled job stops being served)."""


def new_owner_secret() -> str:
    """A fresh random owner key for one connection (128 bits, hex)."""
    return secrets.token_hex(16)


def job_id_from_session(session_id: str | None) -> int | None:
    """The job id a session id names by convention (``"139"`` or the TS SDK's ``"139n"``), else ``None``."""
    return job_id_from_text(session_id)


@dataclasses.dataclass
class Caller:
    """What one request proved about who sends it.

    Attributes:
        client: the client's network address (rate limits and fair scheduling).
        grants: session tokens presented on this connection (or in an HTTP ``Authorization`` header).
        proven_addresses: addresses the channel itself proves (the encrypted init's signer candidates).
        owner_secret: the connection's own random key: on a free node, the owner of sessions it opens.
    """

    client: str
    grants: Grants = dataclasses.field(default_factory=Grants)
    proven_addresses: tuple[str, ...] = ()
    owner_secret: str = dataclasses.field(default_factory=new_owner_secret, repr=False)

    def with_proof(self, addresses: tuple[str, ...]) -> Caller:
        """The same caller, also proven to hold one of ``addresses`` (a request through an encrypted session)."""
        return dataclasses.replace(self, proven_addresses=tuple(a.lower() for a in addresses))

    def free_owner(self) -> str:
        """Owner key of sessions this caller opens on a free node."""
        if self.proven_addresses:
            return "addr:" + self.proven_addresses[0]
        return "secret:" + self.owner_secret


@dataclasses.dataclass(frozen=True, slots=True)
class AdmittedJob:
    """A job the caller may spend: what billing and receipts need."""

    job_id: int
    depositor: str
    price_per_token: int
    max_tokens: int
    proof_interval: int

    @property
    def owner(self) -> str:
        """Owner key of the job's session data: its depositor."""
        return "addr:" + self.depositor.lower()


class Admission:
    """Job checks and depositor authentication for one node; see the module docstring."""

    def __init__(self, billing: BillingService | None, config: NodeConfig) -> None:
        self.billing = billing
        self.config = config
        self._jobs: dict[int, tuple[SessionJob, float]] = {}
        if billing is not None and config.insecure_serve_without_depositor_auth:
            log.warning("INSECURE: this paid node serves anyone who names a job id "
                        "(insecure_serve_without_depositor_auth); depositors' deposits can be spent by strangers")

    @property
    def paid(self) -> bool:
        return self.billing is not None

    async def admit(self, caller: Caller, job_id: int | None, session_id: str | None = None, *,
                    permission: str = "prompt") -> AdmittedJob | None:
        """Check that ``caller`` may use ``job_id`` (or the job its ``session_id`` names) for ``permission``.

        Returns ``None`` on a free node, where everyone is admitted.

        Raises:
            JobRefusedError: JOB_REQUIRED, JOB_NOT_FOUND, JOB_NOT_ACTIVE, WRONG_HOST, MODEL_MISMATCH.
            AuthError: AUTH_REQUIRED, AUTH_FAILED, SESSION_EXPIRED, PERMISSION_DENIED.
        """
        if self.billing is None:
            return None
        if job_id is None:
            job_id = job_id_from_session(session_id)
        if job_id is None:
            raise JobRefusedError("this node serves paid sessions only: send the on-chain job id",
                                  code=ErrorCode.JOB_REQUIRED)
        job = await self._job(job_id)
        if not self.config.insecure_serve_without_depositor_auth:
            self._authenticate(caller, job_id, job.depositor, permission)
        return AdmittedJob(job_id=job_id, depositor=job.depositor, price_per_token=job.price_per_token,
                           max_tokens=job.max_tokens, proof_interval=job.proof_interval)

    def owner_for(self, caller: Caller, admitted: AdmittedJob | None) -> str:
        """The key under which this caller's session data lives."""
        return admitted.owner if admitted is not None else caller.free_owner()

    async def _job(self, job_id: int) -> SessionJob:
        cached = self._jobs.get(job_id)
        now = time.monotonic()
        if cached is not None and now - cached[1] < JOB_CACHE_SECONDS:
            return cached[0]
        assert self.billing is not None
        job = await self.billing.host.verify_job(job_id)
        if len(self._jobs) > 10_000:
            self._jobs.clear()
        self._jobs[job_id] = (job, now)
        return job

    def _authenticate(self, caller: Caller, job_id: int, depositor: str, permission: str) -> None:
        if caller.grants.holds(job_id):
            caller.grants.require(job_id, permission)
            return
        wanted = Web3.to_checksum_address(depositor)
        if any(Web3.to_checksum_address(a) == wanted for a in caller.proven_addresses):
            if permission not in _DEPOSITOR_PERMISSIONS:
                raise AuthError(f"a signed session init does not allow {permission!r}",
                                code=ErrorCode.PERMISSION_DENIED)
            return
        if caller.proven_addresses:
            raise AuthError(f"the encrypted session was signed by {caller.proven_addresses[0]}, not by the "
                            f"depositor of job {job_id}", code=ErrorCode.AUTH_FAILED)
        if caller.grants:
            raise AuthError(f"the session token is for another job, not job {job_id}", code=ErrorCode.AUTH_FAILED)
        raise AuthError(f"job {job_id} is paid: authenticate as its depositor first (auth_challenge then auth, "
                        "a session token, or an encrypted session signed by the depositor)",
                        code=ErrorCode.AUTH_REQUIRED)
