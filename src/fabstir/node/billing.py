"""The host's billing: count tokens per job, submit checkpoints, settle after the dispute window.

Theory of operation. The streaming path calls :meth:`BillingService.record_served` for
every piece it sends and :meth:`BillingService.end_response` when an answer ends. They
update an in-memory record and never wait for the chain. Served tokens reach the SQLite
ledger in one transaction every ``flush_tokens`` (32) tokens or ``flush_seconds`` (250 ms)
after the first unsaved one, whichever comes first (a loop timer keeps the time bound when
no further token comes), so a host killed mid-answer loses at most one flush window of
what it streamed, and the restarted node bills the rest exactly once (below). Those writes
survive a killed process (WAL, ``synchronous=NORMAL``: no fsync on the streaming path);
writes that guard against double billing (a pending checkpoint, a finished job) are
fsynced (``synchronous=FULL``). A background worker, one asyncio task, does the chain work
for every job in turn:

1. A checkpoint is due when a job has ``checkpoint_tokens`` unbilled tokens, or at
   least ``min_tokens`` once a response ended or the client disconnected. It is
   capped by what the deposit still covers. What it claims follows the marketplace's
   rules (:class:`~fabstir.chain.money.ClaimRules`, detected on chain once):

   - ours (exact billing): no minimum charge, and once the client has gone the last
     remainder, however small, is claimed too, so billed == served to the token;
   - the public contracts: the first checkpoint claims at least the job's
     ``proofInterval`` (the session's minimum charge, as on the public network); after
     it, fewer than ``min_tokens`` left over at the end are not billed (no claim may be
     smaller).

   Either way a checkpoint taken while an answer streams keeps ``min_tokens`` back, so
   the answer's end is claimed with its tail when the answer ends.
   Where the marketplace takes the depositor's countersignatures (ours) and the client
   sends them (``usage_ack``, feature ``usage-countersign``), the node records each
   answer it ended in the job's usage transcript (:class:`~fabstir.chain.usage.UsageTranscript`,
   :meth:`BillingService.record_answer`), keeps the latest countersignature that matches
   it (:meth:`BillingService.acknowledge`: signed by the depositor, a count and hash the
   node itself reached) durably in the ledger next to the served count, and claims with
   it (``submitCountersignedProof``, accepted at once). Once a job has a countersignature,
   an ended answer no longer triggers a provisional (unsigned) claim: the node waits for
   the client's countersignature, and claims provisionally only mid-answer (every
   ``checkpoint_tokens``) and, once the client has gone, the tail it never countersigned,
   which the depositor may dispute during the dispute window. The host completes at once
   when everything it claimed is countersigned, else after the window.
2. Before sending, the checkpoint (its token count and deterministic proof hash)
   is written to the ledger as *pending*. If the receipt is lost or the node
   restarts, the pending checkpoint is first looked up on chain (the ProofSystem
   records every hash): found means done, not found means send it again. So a
   checkpoint is never submitted twice. Once it has landed, the same ledger
   transaction that counts it as submitted records it (index, proof hash, token
   range, time) for the checkpoint index (:mod:`fabstir.node.checkpoint_index`).
3. Once the client has gone and nothing billable is left, the job is completed
   when chain time passes the last checkpoint plus the dispute window. A job the
   depositor already settled is simply marked done.
4. Checkpoints wait for a quiet moment: while engines stream (and a quarter second after), a
   due checkpoint is held back, at most ``max_defer`` seconds and never past twice
   ``checkpoint_tokens`` unbilled, so chain work does not compete with tokens for the CPU.
5. A refused transaction that may succeed later ("Rate limit exceeded") is
   retried after ``retry_delay``; others are logged and the job is parked.

On start, unfinished jobs are loaded from the ledger and resumed, so a node that
restarts mid-session still bills and settles what it served.

6. With a proof service (``proofs``, :class:`fabstir.zk.service.ProofService`), every checkpoint that lands
   is handed to it (job, cumulative tokens, transcript hash: the countersigned one, else the node's own at
   the last answer that ended), and it proves and submits it in the background (issue 14 P3).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from fabstir.chain.money import MIN_PROVEN_TOKENS, PUBLIC_RULES, ClaimRules, first_claim_minimum, smallest_claim
from fabstir.chain.records import JobStatus
from fabstir.chain.usage import UsageAck, UsageTranscript
from fabstir.errors import ContractError, FabstirError
from fabstir.node.checkpoint_index import CheckpointRecord
from fabstir.node.host_chain import HostChain
from fabstir.zk.service import ProofService

__all__ = ["BillingService", "FLUSH_SECONDS", "FLUSH_TOKENS", "JobLedgerEntry", "MIN_PROVEN_TOKENS"]

log = logging.getLogger("fabstir.node.billing")

FLUSH_TOKENS = 32
"""Served tokens held in memory at most before they are written to the ledger."""
FLUSH_SECONDS = 0.25
"""Seconds a served token waits in memory at most before it is written to the ledger."""

SETTLE_POLL = 5.0
"""Seconds at most between two looks at a job waiting out its dispute window."""

_RETRYABLE = ("Excessive tokens claimed", "Rate limit exceeded", "Must wait dispute window")


@dataclasses.dataclass
class JobLedgerEntry:
    """What the node knows about one job it served."""

    job_id: int
    max_tokens: int
    min_charge: int = MIN_PROVEN_TOKENS
    generated: int = 0
    submitted: int = 0
    pending_tokens: int = 0
    pending_hash: str = ""
    flush: bool = False
    closed: bool = False
    done: bool = False
    parked_reason: str = ""

    @property
    def unbilled(self) -> int:
        return min(self.generated, self.max_tokens) - self.submitted - self.pending_tokens

    @property
    def needs_minimum_charge(self) -> bool:
        """Served something, billed nothing yet, and the client is gone."""
        return self.closed and self.generated > 0 and self.submitted == 0 and self.pending_tokens == 0


@dataclasses.dataclass
class _Consent:
    """One job's usage transcript as this node ended its answers, and the depositor's latest countersignature."""

    transcript: UsageTranscript = dataclasses.field(default_factory=UsageTranscript)
    ack: UsageAck | None = None
    ack_landed: int = 0
    """Countersigned tokens the marketplace holds (``usage(jobId).acknowledged``) as far as this node knows."""
    heads: dict[int, bytes] = dataclasses.field(default_factory=dict)
    """Transcript hash after each answer ended on this run (recent ones), by cumulative tokens."""

    def row(self, job_id: int) -> tuple[int, int, str, int, str, str, int]:
        ack = self.ack
        return (job_id, self.transcript.tokens, self.transcript.transcript_hash.hex(), ack.tokens if ack else 0,
                ack.transcript_hash.hex() if ack else "", ack.signature.hex() if ack else "", self.ack_landed)

    @classmethod
    def from_row(cls, row: tuple[int, int, str, int, str, str, int]) -> _Consent:
        job_id, tokens, chain_hash, ack_tokens, ack_hash, signature, landed = row
        transcript = UsageTranscript(tokens, bytes.fromhex(chain_hash))
        ack = UsageAck(job_id, ack_tokens, bytes.fromhex(ack_hash), bytes.fromhex(signature)) if signature else None
        return cls(transcript, ack, landed, {tokens: transcript.transcript_hash})


_MAX_HEADS = 256


class _Landed(NamedTuple):
    """A checkpoint that just landed on chain, to record with its job's row."""

    job_id: int
    proof_hash: str
    token_start: int
    token_end: int
    timestamp_ms: int


_MAX_SQLITE_INTEGER = 2**63 - 1


class _Ledger:
    """SQLite persistence of :class:`JobLedgerEntry` rows, and of the checkpoints that landed.

    Both tables are created when missing, so a ledger written before the ``checkpoints`` table existed opens
    as is (its earlier checkpoints are simply not listed).
    """

    _COLUMNS = [f.name for f in dataclasses.fields(JobLedgerEntry)]

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._synchronous = ""
        columns = ", ".join(f"{c} {'INTEGER PRIMARY KEY' if c == 'job_id' else ''}" for c in self._COLUMNS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({columns})")
        self._db.execute("CREATE TABLE IF NOT EXISTS checkpoints (job_id INTEGER NOT NULL, idx INTEGER NOT NULL, "
                         "proof_hash TEXT NOT NULL UNIQUE, token_start INTEGER NOT NULL, "
                         "token_end INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL, PRIMARY KEY (job_id, idx))")
        self._db.execute("CREATE TABLE IF NOT EXISTS usage (job_id INTEGER PRIMARY KEY, transcript_tokens INTEGER "
                         "NOT NULL, transcript_hash TEXT NOT NULL, ack_tokens INTEGER NOT NULL, ack_hash TEXT "
                         "NOT NULL, ack_signature TEXT NOT NULL, ack_landed INTEGER NOT NULL)")
        marks = ", ".join("?" for _ in self._COLUMNS)
        self._insert = f"INSERT OR REPLACE INTO jobs ({', '.join(self._COLUMNS)}) VALUES ({marks})"

    def save(self, entries: Iterable[JobLedgerEntry], *, fsync: bool = True, landed: _Landed | None = None,
             consent: tuple[int, _Consent] | None = None) -> None:
        """Write ``entries`` (and record ``landed``, numbered after the job's earlier checkpoints, and a job's
        ``consent``) in one transaction; without ``fsync`` it survives a killed process, not a power cut."""
        self._set_synchronous("FULL" if fsync else "NORMAL")
        self._db.execute("BEGIN")
        try:
            self._db.executemany(self._insert, [dataclasses.astuple(entry) for entry in entries])
            if consent is not None:
                self._db.execute("INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?, ?, ?)", consent[1].row(consent[0]))
            if landed is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO checkpoints (job_id, idx, proof_hash, token_start, token_end, timestamp_ms) "
                    "VALUES (?, (SELECT COUNT(*) FROM checkpoints WHERE job_id = ?), ?, ?, ?, ?)",
                    (landed.job_id, landed.job_id, *landed[1:]))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _set_synchronous(self, mode: str) -> None:
        if mode != self._synchronous:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def unfinished(self) -> list[JobLedgerEntry]:
        rows = self._db.execute(f"SELECT {', '.join(self._COLUMNS)} FROM jobs WHERE done = 0").fetchall()
        entries = []
        for row in rows:
            entry = JobLedgerEntry(*row)
            for name in ("flush", "closed", "done"):
                setattr(entry, name, bool(getattr(entry, name)))
            entries.append(entry)
        return entries

    def consent(self, job_id: int) -> _Consent | None:
        """``job_id``'s usage transcript and latest countersignature, if any were stored."""
        if not 0 <= job_id <= _MAX_SQLITE_INTEGER:
            return None
        row = self._db.execute("SELECT * FROM usage WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _Consent.from_row(row)

    def checkpoints(self, job_id: int) -> list[CheckpointRecord]:
        """The checkpoints recorded for ``job_id``, in chain order."""
        if not 0 <= job_id <= _MAX_SQLITE_INTEGER:  # no such job could have been stored
            return []
        rows = self._db.execute("SELECT idx, proof_hash, token_start, token_end, timestamp_ms FROM checkpoints "
                                "WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()
        return [CheckpointRecord(index, bytes.fromhex(proof), start, end, ms) for index, proof, start, end, ms in rows]

    def close(self) -> None:
        self._db.close()


class BillingService:
    """Checkpoints and settlement for every job this host serves; see the module docstring."""

    def __init__(
        self,
        host: HostChain,
        ledger_path: str | Path,
        *,
        checkpoint_tokens: int = 1000,
        min_tokens: int = MIN_PROVEN_TOKENS,
        retry_delay: float = 1.0,
        complete_sessions: bool = True,
        quiet_for: Callable[[], float] | None = None,
        quiet_seconds: float = 0.25,
        max_defer: float = 5.0,
        defer_while_streaming: bool = True,
        flush_tokens: int = FLUSH_TOKENS,
        flush_seconds: float = FLUSH_SECONDS,
        proofs: ProofService | None = None,
    ) -> None:
        self.host = host
        self.proofs = proofs
        """Proves each checkpoint that lands, in the background (``None``: checkpoints are not proved)."""
        self.checkpoint_tokens = checkpoint_tokens
        self.min_tokens = min_tokens
        self.retry_delay = retry_delay
        self.complete_sessions = complete_sessions
        self._quiet_for = quiet_for
        self._defer_while_streaming = defer_while_streaming
        self._quiet_seconds = quiet_seconds
        self._max_defer = max_defer
        self._due_since: dict[int, float] = {}
        self._ledger = _Ledger(Path(ledger_path))
        self._jobs: dict[int, JobLedgerEntry] = {}
        self.flush_tokens = flush_tokens
        self.flush_seconds = flush_seconds
        self._unsaved: dict[int, int] = {}
        """Served tokens per job not yet in the ledger."""
        self._unsaved_since = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self.settled: dict[int, float] = {}
        """Jobs this service completed (or saw completed), with the time it noticed."""
        self._rules: ClaimRules = PUBLIC_RULES
        self._rules_known = False
        self._consents: dict[int, _Consent] = {}

    # --- streaming path: memory + SQLite only ----------------------------------

    def open_job(self, job_id: int, max_tokens: int, proof_interval: int = MIN_PROVEN_TOKENS) -> JobLedgerEntry:
        """Start (or continue) billing ``job_id``, whose deposit covers ``max_tokens``.

        ``proof_interval`` (from the job's terms) is the session's minimum charge, as on the
        public network: the first checkpoint claims at least that many tokens.
        """
        entry = self._jobs.get(job_id)
        if entry is None:
            entry = JobLedgerEntry(job_id=job_id, max_tokens=max_tokens,
                                   min_charge=first_claim_minimum(proof_interval, max_tokens, self.min_tokens))
            self._jobs[job_id] = entry
        self._consent(job_id)
        entry.closed = False
        self._save(entry)
        return entry

    def remaining_tokens(self, job_id: int) -> int:
        """Tokens the deposit still covers, counting everything served so far."""
        entry = self._jobs.get(job_id)
        return 0 if entry is None else max(0, entry.max_tokens - entry.generated)

    def record_served(self, job_id: int, tokens: int) -> None:
        """Count ``tokens`` just served on ``job_id`` (call it for every piece sent).

        Cheap: memory only, except every ``flush_tokens`` tokens or ``flush_seconds`` after the first
        unsaved one (a timer keeps that bound when no further piece comes), when all unsaved counts are
        written in one transaction.
        """
        entry = self._jobs[job_id]
        was_due = self._checkpoint_due(entry)
        entry.generated += tokens
        now = time.monotonic()
        if not self._unsaved:
            self._unsaved_since = now
        self._unsaved[job_id] = self._unsaved.get(job_id, 0) + tokens
        if self._unsaved[job_id] >= self.flush_tokens or now - self._unsaved_since >= self.flush_seconds:
            self.flush()
        else:
            self._arm_flush_timer()
        if not was_due and self._checkpoint_due(entry):
            self._poke()

    def end_response(self, job_id: int) -> None:
        """An answer on ``job_id`` ended (complete, cancelled or failed): persist now and bill what is due."""
        entry = self._jobs[job_id]
        entry.flush = True
        self._save(entry, fsync=False)
        self._poke()

    def add_tokens(self, job_id: int, tokens: int, *, end_of_response: bool = True) -> None:
        """Count ``tokens`` served on ``job_id`` at once and persist them (``record_served`` does it per piece)."""
        entry = self._jobs[job_id]
        entry.generated += tokens
        entry.flush = entry.flush or end_of_response
        self._save(entry, fsync=False)
        self._poke()

    def record_answer(self, job_id: int, text: str, tokens: int) -> None:
        """An answer on ``job_id`` ended on the wire (its ``stream_end`` goes next) with ``text`` and ``tokens``:
        extend the job's usage transcript, which the client's countersignatures must match."""
        consent = self._consent(job_id)
        consent.transcript.add(text, tokens)
        consent.heads[consent.transcript.tokens] = consent.transcript.transcript_hash
        while len(consent.heads) > _MAX_HEADS:
            del consent.heads[next(iter(consent.heads))]
        self._ledger.save([], fsync=False, consent=(job_id, consent))

    def acknowledge(self, ack: UsageAck, depositor: str) -> bool:
        """Keep ``ack`` (the client's countersignature) if it is worth claiming with; returns whether it was kept.

        Kept when it is signed by ``depositor`` for this chain and marketplace, counts more tokens than the
        last one kept, and names a count and transcript hash this node reached when an answer ended (so the
        client acknowledges exactly what it was sent). Stored durably before this returns.
        """
        entry, consent = self._jobs.get(ack.job_id), self._consents.get(ack.job_id)
        if entry is None or consent is None:
            return False
        if ack.tokens <= (consent.ack.tokens if consent.ack else 0) or ack.tokens > entry.max_tokens:
            return False
        if consent.heads.get(ack.tokens) != ack.transcript_hash:
            log.warning("job %d: a countersignature of %d tokens names a transcript this node did not send",
                        ack.job_id, ack.tokens)
            return False
        signer = self.host.ack_signer(ack)
        if signer is None or signer.lower() != depositor.lower():
            log.warning("job %d: a countersignature not signed by the depositor was ignored", ack.job_id)
            return False
        consent.ack = ack
        self._ledger.save([], consent=(ack.job_id, consent))
        self._poke()
        return True

    def _consent(self, job_id: int) -> _Consent:
        consent = self._consents.get(job_id)
        if consent is None:
            consent = self._ledger.consent(job_id) or _Consent()
            self._consents[job_id] = consent
        return consent

    def flush(self) -> None:
        """Write every unsaved served-token count to the ledger, in one transaction."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        entries = [self._jobs[job_id] for job_id in self._unsaved if job_id in self._jobs]
        self._unsaved.clear()
        if entries:
            self._ledger.save(entries, fsync=False)

    def _arm_flush_timer(self) -> None:
        if self._flush_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): nothing could flush later
            self.flush()
            return
        delay = max(0.0, self._unsaved_since + self.flush_seconds - time.monotonic())
        self._flush_timer = loop.call_later(delay, self.flush)

    def connection_closed(self, job_id: int) -> None:
        """The client left: bill what is left and settle after the dispute window."""
        entry = self._jobs.get(job_id)
        if entry is not None:
            entry.closed, entry.flush = True, True
            self._save(entry)
            self._poke()

    def watch_engines(self, quiet_for: Callable[[], float]) -> None:
        """Hold checkpoints back while the node's engines generate (``quiet_for``: seconds idle)."""
        if self._quiet_for is None and self._defer_while_streaming:
            self._quiet_for = quiet_for

    def entry(self, job_id: int) -> JobLedgerEntry | None:
        return self._jobs.get(job_id)

    def checkpoints(self, job_id: int) -> list[CheckpointRecord]:
        """Every checkpoint of ``job_id`` this node saw land on chain, in chain order (finished jobs too)."""
        return self._ledger.checkpoints(job_id)

    def _save(self, entry: JobLedgerEntry, *, fsync: bool = True, landed: _Landed | None = None,
              consent: _Consent | None = None) -> None:
        """Write ``entry`` (its served tokens included, the checkpoint that just ``landed``, its ``consent``) now."""
        self._unsaved.pop(entry.job_id, None)
        if not self._unsaved and self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._ledger.save([entry], fsync=fsync, landed=landed,
                          consent=None if consent is None else (entry.job_id, consent))

    def _poke(self) -> None:
        self._idle.clear()
        self._wake.set()

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Resume unfinished jobs from the ledger and start the worker."""
        for entry in self._ledger.unfinished():
            entry.closed, entry.flush = True, True  # their connections died with the previous process
            self._jobs[entry.job_id] = entry
            self._consent(entry.job_id)
            log.info("resuming billing of job %d (%d generated, %d submitted)", entry.job_id, entry.generated,
                     entry.submitted)
        self._worker = asyncio.create_task(self._run(), name="fabstir-billing")
        self._poke()
        if self.proofs is not None:
            await self.proofs.start()

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until the worker has nothing left to do right now (tests, the demo)."""
        async with asyncio.timeout(timeout):
            while True:
                await self._idle.wait()
                if not self._has_work():
                    return
                await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self.flush()
        self._ledger.close()
        if self.proofs is not None:
            await self.proofs.aclose()

    # --- worker ----------------------------------------------------------------------

    def _has_work(self) -> bool:
        return any(not e.done and not e.parked_reason
                   and (self._checkpoint_due(e) or self._countersign_due(e) or e.pending_tokens or e.closed)
                   for e in self._jobs.values())

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            delay = None
            for entry in list(self._jobs.values()):
                if entry.done or entry.parked_reason:
                    continue
                try:
                    wait = await self._advance(entry)
                except ContractError as exc:
                    wait = self._on_refusal(entry, exc)
                except FabstirError as exc:  # chain unreachable etc.: try again later
                    log.warning("billing job %d: %s", entry.job_id, exc)
                    wait = self.retry_delay
                if wait is not None:
                    delay = wait if delay is None else min(delay, wait)
            if delay is None and not self._has_work():
                self._idle.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _on_refusal(self, entry: JobLedgerEntry, exc: ContractError) -> float | None:
        if any(reason in exc.reason for reason in _RETRYABLE):
            return self.retry_delay
        if not exc.reason:  # mined and failed without a reason (passed its estimate): nothing changed, try again;
            return self.retry_delay  # a claim the contract refuses shows its reason at the next estimate
        if "Session not active" in exc.reason and entry.closed:  # the depositor (or a timeout) settled it first
            log.warning("billing job %d: settled on chain before this claim (%s)", entry.job_id, exc.reason)
            entry.pending_tokens, entry.pending_hash = 0, ""
            return self._mark_done(entry)
        log.warning("billing job %d parked: %s", entry.job_id, exc)
        entry.parked_reason = exc.reason or exc.message
        if entry.pending_tokens:  # the refused checkpoint was never recorded
            entry.pending_tokens, entry.pending_hash = 0, ""
        self._save(entry)
        return None

    @property
    def rules(self) -> ClaimRules:
        """The marketplace's claim rules (the public ones until the worker has detected them)."""
        return self._rules

    def _countersigned(self, entry: JobLedgerEntry) -> UsageAck | None:
        """The job's latest countersignature, where the marketplace takes them."""
        consent = self._consents.get(entry.job_id)
        return consent.ack if consent is not None and self._rules.countersigned else None

    def _awaits_countersignature(self, entry: JobLedgerEntry) -> bool:
        """The client countersigns this job and is still connected: its next countersignature is coming."""
        return not entry.closed and self._countersigned(entry) is not None

    def _countersign_due(self, entry: JobLedgerEntry) -> bool:
        """A countersigned claim is due: the countersignature is ahead of the chain's, and worth a transaction
        (at least ``min_tokens`` beyond what was claimed, or the client has gone)."""
        ack = self._countersigned(entry)
        if ack is None or ack.tokens <= self._consents[entry.job_id].ack_landed:
            return False
        return entry.closed or ack.tokens >= entry.submitted + entry.pending_tokens + self.min_tokens

    def _checkpoint_due(self, entry: JobLedgerEntry) -> bool:
        if self._awaits_countersignature(entry):
            # an ended answer waits for its countersignature; provisional claims only as if mid-answer
            return entry.unbilled >= self.checkpoint_tokens and self._claim(entry) >= self.min_tokens
        if entry.flush:
            if entry.unbilled >= self.min_tokens or entry.needs_minimum_charge:
                return True
            return self._rules.exact and entry.closed and entry.unbilled > 0  # the session's last remainder
        smallest = (self.min_tokens if self._rules.exact
                    else smallest_claim(entry.submitted, entry.min_charge, self.min_tokens))
        return entry.unbilled >= self.checkpoint_tokens and self._claim(entry) >= smallest

    def _claim(self, entry: JobLedgerEntry) -> int:
        """Tokens the next checkpoint claims: all unbilled once an answer ended (public rules: at least the
        minimum charge at first), else all but ``min_tokens``, kept back so that the answer's end is claimed
        with its tail when it comes (on the public contracts no smaller claim is possible)."""
        if not entry.flush or self._awaits_countersignature(entry):
            return entry.unbilled - self.min_tokens
        if self._rules.exact or entry.submitted:
            return entry.unbilled
        return max(entry.unbilled, entry.min_charge)

    async def _advance(self, entry: JobLedgerEntry) -> float | None:
        """Do the next chain step for ``entry``; returns seconds to wait before looking again, if any."""
        if not self._rules_known:
            self._rules, self._rules_known = await self.host.claim_rules(), True
        if entry.pending_tokens:
            await self._confirm_pending(entry)
        if self._countersign_due(entry):
            wait = self._defer(entry)
            if wait:
                return wait
            self._due_since.pop(entry.job_id, None)
            await self._countersign(entry)
            return 0.0
        if self._checkpoint_due(entry):
            wait = self._defer(entry)
            if wait:
                return wait
            self._due_since.pop(entry.job_id, None)
            await self._checkpoint(entry)
            return 0.0
        if entry.flush and not entry.closed:
            entry.flush = False
            self._save(entry)
        if entry.closed and self.complete_sessions:
            return await self._settle(entry)
        return None

    def _defer(self, entry: JobLedgerEntry) -> float:
        """Seconds to hold a due checkpoint back while the engines stream (0: send it now).

        Chain work shares the process (and, on the embedded chain, the GIL) with token streaming, so a
        checkpoint waits for ``quiet_seconds`` without generation, at most ``max_defer`` seconds and
        never past twice ``checkpoint_tokens`` unbilled.
        """
        if self._quiet_for is None or entry.unbilled >= 2 * self.checkpoint_tokens:
            return 0.0
        now = time.monotonic()
        since = self._due_since.setdefault(entry.job_id, now)
        quiet = self._quiet_for()
        if quiet >= self._quiet_seconds or now - since >= self._max_defer:
            return 0.0
        return max(0.02, self._quiet_seconds - quiet)

    async def _confirm_pending(self, entry: JobLedgerEntry) -> None:
        proof = bytes.fromhex(entry.pending_hash)
        if not await self.host.is_proof_recorded(proof):
            await self.host.submit_checkpoint(entry.job_id, entry.pending_tokens, proof)
        landed = _Landed(entry.job_id, entry.pending_hash, entry.submitted, entry.submitted + entry.pending_tokens,
                         int(time.time() * 1000))
        entry.submitted += entry.pending_tokens
        entry.pending_tokens, entry.pending_hash = 0, ""
        self._save(entry, landed=landed)
        if self.proofs is not None:
            consent = self._consents.get(entry.job_id)
            self.proofs.enqueue(entry.job_id, entry.submitted,
                                consent.transcript.transcript_hash if consent is not None else bytes(32))

    async def _checkpoint(self, entry: JobLedgerEntry) -> None:
        tokens = self._claim(entry)
        proof = self.host.proof_hash(entry.job_id, entry.submitted + tokens)
        entry.pending_tokens, entry.pending_hash = tokens, proof.hex()
        self._save(entry)  # written before sending: a crash or lost receipt is recovered on chain
        await self._confirm_pending(entry)
        log.info("job %d: checkpoint of %d tokens (%d in total)", entry.job_id, tokens, entry.submitted)

    async def _countersign(self, entry: JobLedgerEntry) -> None:
        """Claim up to the latest countersignature (once: a landed one is found on chain, not sent again)."""
        consent = self._consents[entry.job_id]
        ack = consent.ack
        assert ack is not None
        proof = self.host.proof_hash(entry.job_id, ack.tokens, ack.transcript_hash)
        if (await self.host.usage_record(entry.job_id)).acknowledged < ack.tokens:
            await self.host.submit_countersigned(ack, proof)
        landed = None
        if ack.tokens > entry.submitted:
            landed = _Landed(entry.job_id, proof.hex(), entry.submitted, ack.tokens, int(time.time() * 1000))
            entry.submitted = ack.tokens
        consent.ack_landed = ack.tokens
        self._save(entry, landed=landed, consent=consent)
        if self.proofs is not None:
            self.proofs.enqueue(entry.job_id, ack.tokens, ack.transcript_hash)
        log.info("job %d: countersigned checkpoint of %d tokens in total", entry.job_id, ack.tokens)

    async def _settle(self, entry: JobLedgerEntry) -> float | None:
        job = await self.host.get_job(entry.job_id)
        if job.status is not JobStatus.ACTIVE:
            return self._mark_done(entry)
        window = await self.host.dispute_window()
        now = await self.host.market.chain.timestamp()
        due = job.last_proof_time + window
        if now < due and not await self._all_countersigned(entry.job_id, job.tokens_used):
            # looked at again within SETTLE_POLL seconds: a dispute (or chain time) may settle it sooner
            return min(float(due - now) + 0.5, SETTLE_POLL)
        await self.host.complete(entry.job_id)
        log.info("job %d: completed (%d tokens billed)", entry.job_id, entry.submitted)
        return self._mark_done(entry)

    async def _all_countersigned(self, job_id: int, tokens_used: int) -> bool:
        """Every token claimed on ``job_id`` is countersigned: the host may complete without waiting."""
        if not self._rules.countersigned or tokens_used == 0:
            return False
        return (await self.host.usage_record(job_id)).acknowledged == tokens_used

    def _mark_done(self, entry: JobLedgerEntry) -> float | None:
        entry.done = True
        self._save(entry)
        self._jobs.pop(entry.job_id, None)  # finished: kept in the ledger, no longer in memory
        self._consents.pop(entry.job_id, None)
        self.settled[entry.job_id] = time.time()
        return None
