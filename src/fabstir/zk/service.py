"""The host's proof worker: prove each checkpoint off the serving path, cache the proof, submit it, keep a history.

Theory of operation. Billing tells the service when a checkpoint landed on chain (:meth:`ProofService.enqueue`:
job, cumulative tokens, the transcript hash it names). One asyncio task takes them in turn: it builds the proof in
a separate process (EZKL holds the GIL for the whole ~1.5-4 s of proving, which would stall every stream of the
node were it a thread), verifies it there too, writes it to the cache (``<directory>/proofs/``: a statement
proved once is never proved again), submits it (``submitCheckpointProof``) and records the outcome in the
history (:class:`~fabstir.zk.history.ProofHistory`). The circuit's keys are built once, in that process, into
the keys cache (:func:`fabstir.zk.keys.ensure_keys`). On start, proofs a previous run made but did not submit,
or that failed (the chain unreachable), are tried again (a made proof comes from the cache).

The service runs only where the marketplace takes checkpoint proofs (``FEATURE_CHECKPOINT_PROOFS`` and a
checkpoint verifier set on its ProofSystem); elsewhere :meth:`start` leaves it disabled and checkpoints are
simply not proved.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from fabstir.chain import jobs
from fabstir.chain.checkpoint_proofs import FEATURE_CHECKPOINT_PROOFS, checkpoint_verifier, submit_checkpoint_proof
from fabstir.chain.contracts import Marketplace
from fabstir.errors import ContractError, FabstirError, ProofError
from fabstir.zk.history import FAILED, PROVED, REJECTED, VERIFIED, ProofHistory, ProofRecord
from fabstir.zk.keys import CircuitKeys, ensure_keys
from fabstir.zk.prover import CheckpointProof, CheckpointStatement, generate_proof, verify_proof

__all__ = ["ProofService"]

log = logging.getLogger("fabstir.zk.service")

ZERO_HASH = b"\x00" * 32


def prover_pool() -> ProcessPoolExecutor:
    """The one prover process (spawned: EZKL holds the GIL for a whole proof, so it never runs in the node's
    process). It exits by itself when the node that started it is gone, even one killed without closing it."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent,
                               initargs=(os.getpid(),))


def _exit_with_parent(parent: int) -> None:
    """In the prover process: a watchdog thread that ends it once its parent is no longer ``parent``."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="fabstir-prover-watchdog", daemon=True).start()


def _child_keys(cache_dir: str | None, srs: str | None, progress: bool) -> str:
    return str(ensure_keys(cache_dir, srs=srs, progress=print if progress else None).directory)


def _child_prove(keys_dir: str, statement: dict[str, Any]) -> str:
    keys = CircuitKeys(Path(keys_dir))
    proof = generate_proof(keys, CheckpointStatement.from_dict(statement))
    if not verify_proof(keys, proof):
        raise ProofError("a fresh proof does not verify", code="PROOF_FAILED")
    return proof.to_json()


def _child_verify(keys_dir: str, proof: str) -> bool:
    return verify_proof(CircuitKeys(Path(keys_dir)), CheckpointProof.from_json(proof))


class ProofService:
    """Checkpoint proofs of one host on one marketplace; see the module docstring."""

    def __init__(self, market: Marketplace, account: LocalAccount, directory: str | Path, *,
                 keys_dir: str | Path | None = None, srs: str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        """``directory`` holds the history (``proofs.db``) and the proof cache; ``keys_dir`` the circuit keys
        (default :func:`fabstir.zk.keys.default_cache_dir`)."""
        self.market = market
        self.account = account
        self.directory = Path(directory)
        self.history = ProofHistory(self.directory / "proofs.db")
        self._cache = self.directory / "proofs"
        self._keys_dir = None if keys_dir is None else str(keys_dir)
        self._srs = None if srs is None else str(srs)
        self._progress = progress
        self._keys: str | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._queue: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._set_up = asyncio.Event()
        self.enabled: bool | None = None
        """``None`` until :meth:`start` looked at the marketplace; then whether proofs are made."""

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker: it checks that the marketplace takes checkpoint proofs, builds the keys (the first
        time only, in the prover process), then proves what was enqueued (:meth:`ready` waits for the setup)."""
        self._task = asyncio.create_task(self._main(), name="fabstir-proofs")

    async def ready(self, timeout: float | None = None) -> bool:
        """Wait for the setup :meth:`start` began; returns whether proofs are made."""
        async with asyncio.timeout(timeout):
            await self._set_up.wait()
        return bool(self.enabled)

    async def _setup(self) -> bool:
        features = await jobs.marketplace_features(self.market)
        verifier = await checkpoint_verifier(self.market) if features & FEATURE_CHECKPOINT_PROOFS else None
        if verifier is None:
            log.info("checkpoint proofs off: the marketplace takes none")
            self.enabled = False
            return False
        self._pool = prover_pool()
        if self._progress:
            self._progress("checkpoint proofs on: building or loading the circuit keys in the prover process")
        loop = asyncio.get_running_loop()
        self._keys = await loop.run_in_executor(self._pool, _child_keys, self._keys_dir, self._srs,
                                                self._progress is not None)
        self.enabled = True
        return True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pool is not None:
            pool = self._pool
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
        self.history.close()

    def enqueue(self, job_id: int, tokens: int, transcript_hash: bytes = ZERO_HASH) -> None:
        """A checkpoint of ``job_id`` at ``tokens`` cumulative tokens landed: prove and submit it (in the
        background; never blocks)."""
        if self.enabled is not False:
            self._queue.put_nowait((job_id, tokens, transcript_hash))

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every enqueued checkpoint was proved and submitted (or failed)."""
        async with asyncio.timeout(timeout):
            await self._queue.join()

    # --- plan 11.6 --------------------------------------------------------------------

    def statement(self, job_id: int, tokens_used: int, transcript_hash: bytes = ZERO_HASH) -> CheckpointStatement:
        return CheckpointStatement(self.market.chain.chain_id, self.market.deployment.marketplace, job_id,
                                   tokens_used, transcript_hash)

    async def generate_proof(self, job_id: int, tokens_used: int,
                             transcript_hash: bytes = ZERO_HASH) -> CheckpointProof:
        """The proof of ``job_id``'s checkpoint at ``tokens_used`` cumulative tokens (from the cache when it was
        made before; else made in the prover process).

        Raises:
            ProofError: proofs are off (ZK_UNAVAILABLE) or could not be made (PROOF_FAILED).
        """
        statement = self.statement(job_id, tokens_used, transcript_hash)
        path = self._cache / f"{job_id}-{tokens_used}-{statement.commitment.hex()[:16]}.json"
        if path.is_file():
            return CheckpointProof.from_json(path.read_text(encoding="utf-8"))
        pool, keys = self._ready()
        text = await asyncio.get_running_loop().run_in_executor(pool, _child_prove, keys, statement.to_dict())
        self._cache.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
        return CheckpointProof.from_json(text)

    async def verify_proof(self, proof: CheckpointProof) -> bool:
        """Whether ``proof`` verifies for its statement (locally, in the prover process)."""
        pool, keys = self._ready()
        return bool(await asyncio.get_running_loop().run_in_executor(pool, _child_verify, keys, proof.to_json()))

    async def submit_proof(self, job_id: int, proof: CheckpointProof) -> ProofRecord:
        """Submit ``proof`` for ``job_id`` (``submitCheckpointProof``) and record the outcome in the history:
        ``verified`` with its transaction, or ``rejected`` with the contract's reason.

        Raises:
            ProofError: the proof is about another job (PROOF_MALFORMED).
        """
        if proof.statement.job_id != job_id:
            raise ProofError(f"the proof is for job {proof.statement.job_id}, not {job_id}", code="PROOF_MALFORMED")
        record = self._record(proof, PROVED, True)
        try:
            landed = await submit_checkpoint_proof(self.market, self.account, job_id, proof.statement.tokens,
                                                   proof.statement.transcript_hash, proof.calldata())
        except ContractError as exc:
            status = REJECTED if exc.reason else FAILED
            return self.history.put(dataclasses.replace(record, status=status, error=exc.reason or exc.message))
        return self.history.put(dataclasses.replace(record, status=VERIFIED, tx_hash=landed.tx_hash,
                                                    gas_used=landed.gas_used))

    def get_proof_history(self, job_id: int) -> list[ProofRecord]:
        """Every proof this host made for ``job_id``: tokens, commitment, transaction and result."""
        return self.history.for_job(job_id)

    # --- worker -------------------------------------------------------------------------

    def _ready(self) -> tuple[ProcessPoolExecutor, str]:
        if self._pool is None or self._keys is None:
            raise ProofError("checkpoint proofs are off (start() found no checkpoint verifier)",
                             code="ZK_UNAVAILABLE")
        return self._pool, self._keys

    def _record(self, proof: CheckpointProof, status: str, verified: bool, error: str = "") -> ProofRecord:
        statement = proof.statement
        return ProofRecord(statement.job_id, statement.tokens, "0x" + statement.transcript_hash.hex(),
                           "0x" + statement.commitment.hex(), "0x" + proof.proof_hash.hex(), status, verified,
                           proof.prove_s, len(proof.snark), error=error)

    async def _prove_and_submit(self, job_id: int, tokens: int, transcript_hash: bytes) -> None:
        statement = self.statement(job_id, tokens, transcript_hash)
        known = self.history.get("0x" + statement.commitment.hex())
        if known is not None and known.status in (VERIFIED, REJECTED):
            return
        try:
            proof = await self.generate_proof(job_id, tokens, transcript_hash)
        except FabstirError as exc:
            self.history.put(ProofRecord(job_id, tokens, "0x" + transcript_hash.hex(),
                                         "0x" + statement.commitment.hex(), "", FAILED, False, 0.0, 0,
                                         error=str(exc)))
            return
        self.history.put(self._record(proof, PROVED, True))
        record = await self.submit_proof(job_id, proof)
        log.info("job %d: checkpoint proof of %d tokens %s%s", job_id, tokens, record.status,
                 f" ({record.error})" if record.error else f" in {record.tx_hash}")

    async def _main(self) -> None:
        try:
            enabled = await self._setup()
        except Exception as exc:  # ezkl missing, keys failed, the prover process died: serve on, unproved
            log.warning("checkpoint proofs off: %s", exc)
            self.enabled, enabled = False, False
        finally:
            self._set_up.set()
        if not enabled:
            while not self._queue.empty():
                self._queue.get_nowait()
                self._queue.task_done()
            return
        for record in self.history.unfinished():  # a previous run stopped before submitting these
            self._queue.put_nowait((record.job_id, record.tokens, bytes.fromhex(record.transcript_hash[2:])))
        while True:
            job_id, tokens, transcript_hash = await self._queue.get()
            try:
                await self._prove_and_submit(job_id, tokens, transcript_hash)
            except Exception as exc:  # the chain is unreachable, the prover died: recorded as failed, next one
                log.warning("job %d: checkpoint proof of %d tokens failed: %s", job_id, tokens, exc)
                commitment = "0x" + self.statement(job_id, tokens, transcript_hash).commitment.hex()
                if (self.history.get(commitment) or ProofRecord(0, 0, "", "", "", FAILED, False, 0.0, 0)).status \
                        != VERIFIED:
                    self.history.put(ProofRecord(job_id, tokens, "0x" + transcript_hash.hex(), commitment, "",
                                                 FAILED, False, 0.0, 0, error=str(exc)))
            finally:
                self._queue.task_done()
