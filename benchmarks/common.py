"""Shared pieces of the benchmarks: settings, model choice, statistics, subprocesses, one timed run.

Every subprocess is started by :class:`ManagedProcess`, bound to 127.0.0.1,
logs to a temporary file (never a pipe that could fill up), and is ended by
PID (SIGTERM, then SIGKILL) in ``close``; :func:`close_all` ends any that are
still alive, and runs at interpreter exit too.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import math
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from fabstir.node.engines.base import Finished, GenerationParams, TokenPiece
from fabstir.node.engines.llama import LlamaCppEngine
from fabstir.node.engines.templates import get_template
from fabstir.protocol import ChatTurn
from fabstir.sdk import FabstirSDK, PromptOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = (REPO_ROOT / ".." / "shared" / "models" / "stories260K.gguf").resolve()
LOOPBACK = "127.0.0.1"
_SERVING = re.compile(r"serving \S+ on (http://127\.0\.0\.1:(\d+))")


def log(text: str) -> None:
    """Progress for humans, on stderr."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every benchmark shares (one model, one prompt, greedy sampling)."""

    model: Path
    model_fallback: bool
    template: str = "raw"
    prompt: str = "Once upon a time"
    max_tokens: int = 256
    context_window: int = 512
    threads: int = 1
    runs: int = 20
    warmup: int = 3
    settle: float = 0.05
    """Seconds of quiet before each timed run, so one side's tail work (socket close) never overlaps the other."""
    startup_timeout: float = 90.0
    run_timeout: float = 60.0

    def model_info(self) -> dict[str, object]:
        """The JSON keys that say which model was used."""
        info: dict[str, object] = {"model": str(self.model)}
        if self.model_fallback:
            info["model_fallback"] = ("tiny random-weight GGUF (stories260K.gguf not found; --allow-fallback-model): "
                                      "its figures say nothing about a real model")
        return info


class ModelMissingError(RuntimeError):
    """The benchmark's model file is not there (and the random-weight fallback was not allowed)."""


def resolve_model(path: str | None, scratch: Path, *, allow_fallback: bool = False) -> tuple[Path, bool]:
    """The GGUF to use and whether it is the tiny random fallback.

    ``path`` given: it must exist. Otherwise the shared stories260K.gguf (``$FABSTIR_SHARED_MODELS``
    overrides the folder). When that file is absent the benchmark fails, unless ``allow_fallback``:
    then a tiny random-weight GGUF is written into ``scratch`` and every result says so
    (``model_fallback``); its tokens/s say nothing about a real model.

    Raises:
        ModelMissingError: the chosen file does not exist, or the default is absent without ``allow_fallback``.
    """
    if path is not None:
        chosen = Path(path).expanduser().resolve()
        if not chosen.is_file():
            raise ModelMissingError(f"model file not found: {chosen}")
        return chosen, False
    default = default_model()
    if default.is_file():
        return default, False
    if not allow_fallback:
        raise ModelMissingError(f"{default} not found: put stories260K.gguf there, pass --model PATH, or pass "
                                "--allow-fallback-model to measure a tiny random-weight model instead")
    from fabstir.testing.tiny_gguf import write_tiny_gguf

    target = scratch / "tiny-random.gguf"
    log(f"WARNING: {default} not found; --allow-fallback-model: writing a tiny random GGUF to {target}")
    write_tiny_gguf(target, context_length=512)
    return target, True


def default_model() -> Path:
    """``../shared/models/stories260K.gguf`` (relative to the repo root), or in ``$FABSTIR_SHARED_MODELS``."""
    folder = os.environ.get("FABSTIR_SHARED_MODELS")
    return (Path(folder) / "stories260K.gguf").resolve() if folder else DEFAULT_MODEL


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (``os.getloadavg``), rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``); ``None`` where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def own_cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- statistics ---------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation between ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rounded(value: float, digits: int = 2) -> float | None:
    """``value`` rounded for JSON; ``None`` for NaN."""
    return None if math.isnan(value) else round(value, digits)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One timed generation.

    ``tokens_per_s`` is completion tokens over the time from sending the
    request (or calling generate) to the last token; ``ttft_ms`` is from the
    same start to the first non-empty text.
    """

    tokens: int
    ttft_ms: float
    tokens_per_s: float
    text: str
    stamps: tuple[float, ...] = ()

    @classmethod
    def from_stamps(cls, started: float, stamps: Sequence[float], tokens: int, text: str) -> Sample:
        """Build a sample from the start time and the arrival time of every text piece."""
        if not stamps:
            raise RuntimeError("the generation produced no text")
        return cls(tokens, (stamps[0] - started) * 1000.0, tokens / (stamps[-1] - started), text, tuple(stamps))


def summarize(samples: Sequence[Sample]) -> tuple[float, float]:
    """Median tokens/s and median TTFT (ms)."""
    return median([s.tokens_per_s for s in samples]), median([s.ttft_ms for s in samples])


# --- subprocesses ----------------------------------------------------------------

_live: dict[int, ManagedProcess] = {}


class ManagedProcess:
    """A child process logging to a temporary file; ended by PID in :meth:`close`."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self._log_file: IO[bytes] = tempfile.NamedTemporaryFile(prefix=f"fabstir-bench-{name}-", suffix=".log",
                                                                delete=False)
        self.log_path = Path(self._log_file.name)
        merged = dict(os.environ)
        merged.update(env or {})
        merged.setdefault("PYTHONUNBUFFERED", "1")
        merged["NO_PROXY"] = merged["no_proxy"] = "127.0.0.1,localhost"
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=merged, cwd=str(REPO_ROOT))
        self.pid = self.proc.pid
        _live[self.pid] = self
        log(f"started {name} (pid {self.pid}); log {self.log_path}")

    def log_text(self) -> str:
        """Everything the process has written so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} (pid {self.pid}) exited with code {code}:\n{self.log_tail()}")

    def close(self, grace: float = 5.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; remove the log unless it failed."""
        _live.pop(self.pid, None)
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) ignored SIGTERM; killing it")
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=grace)
        self._log_file.close()
        if os.environ.get("FABSTIR_BENCH_KEEP_LOGS") != "1":
            self.log_path.unlink(missing_ok=True)


def close_all() -> None:
    """End every child still running (interpreter exit, Ctrl-C)."""
    for process in list(_live.values()):
        try:
            process.close(grace=3.0)
        except Exception as exc:  # keep going: end the others too
            log(f"could not stop {process.name} (pid {process.pid}): {exc}")


atexit.register(close_all)


async def wait_until(check: Callable[[], str | None], process: ManagedProcess, timeout: float, what: str) -> str:
    """Poll ``check`` (returns a value when ready) every 50 ms until ``timeout``, failing early if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        process.check_alive()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout:.0f} s; log tail:\n{process.log_tail()}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def start_node(settings: Settings, *, parallel: int, threads: int, env: dict[str, str] | None = None,
                     extra: Sequence[str] = (), name: str = "fabstir-node",
                     port: int = 0) -> tuple[ManagedProcess, str]:
    """Start ``fabstir node serve`` on a free loopback port (or ``port``); returns the process and its http URL.

    ``env`` adds node settings (``FABSTIR_NODE_<FIELD>``) to the defaults (repeat penalty 1.0); ``extra``
    adds command-line flags (e.g. ``--network FILE --ledger PATH`` for a paid node).
    """
    argv = [sys.executable, "-m", "fabstir.cli", "node", "serve", "--model", str(settings.model),
            "--host", LOOPBACK, "--port", str(port), "--template", settings.template,
            "--context-window", str(settings.context_window), "--parallel", str(parallel),
            "--threads", str(threads), *extra]
    process = ManagedProcess(name, argv, env={"FABSTIR_NODE_REPEAT_PENALTY": "1.0", **(env or {})})
    try:
        def served_url() -> str | None:
            match = _SERVING.search(process.log_text())
            return match.group(1) if match else None

        url = await wait_until(served_url, process, settings.startup_timeout, name)
    except BaseException:
        process.close()
        raise
    log(f"{name} ready at {url} (parallel {parallel}, threads {threads})")
    return process, url


# --- one timed run of each kind ----------------------------------------------------


async def timed_prompt(sdk: FabstirSDK, session_id: str, settings: Settings, *,
                       max_tokens: int | None = None) -> Sample:
    """Time ``settings.prompt`` (greedy) on an open session: from sending to each token's arrival."""
    stamps: list[float] = []
    options = PromptOptions(max_tokens=max_tokens or settings.max_tokens, temperature=0.0)
    started = time.perf_counter()
    result = await asyncio.wait_for(
        sdk.inference.send_prompt(settings.prompt, options, session_id=session_id,
                                  on_token=lambda _piece: stamps.append(time.perf_counter())),
        settings.run_timeout)
    return Sample.from_stamps(started, stamps, result.completion_tokens, result.text)


async def sdk_run(sdk: FabstirSDK, url: str, settings: Settings, *, max_tokens: int | None = None) -> Sample:
    """One prompt through the SDK on a fresh session (connecting is not timed)."""
    session_id = f"bench-{uuid.uuid4().hex[:12]}"
    await sdk.inference.connect_to_session(session_id, url)
    try:
        return await timed_prompt(sdk, session_id, settings, max_tokens=max_tokens)
    finally:
        await sdk.inference.close(session_id)


def inprocess_run(engine: LlamaCppEngine, settings: Settings) -> Sample:
    """One call of ``LlamaCppEngine.generate`` in this process, with the node's sampling settings."""
    template = get_template(settings.template)
    prompt = template.render([ChatTurn("user", settings.prompt)])
    params = GenerationParams(max_tokens=settings.max_tokens, temperature=0.0, repeat_penalty=1.0,
                              stop=template.stop, seed=0)
    stamps: list[float] = []
    parts: list[str] = []
    tokens = 0
    started = time.perf_counter()
    for event in engine.generate(prompt, params, lambda: False):
        if isinstance(event, TokenPiece):
            if event.text:
                stamps.append(time.perf_counter())
                parts.append(event.text)
        elif isinstance(event, Finished):
            tokens = event.completion_tokens
    return Sample.from_stamps(started, stamps, tokens, "".join(parts))


def load_engine(settings: Settings, threads: int) -> LlamaCppEngine:
    """A ``LlamaCppEngine`` configured like the node's engines."""
    return LlamaCppEngine(settings.model, context_window=settings.context_window, threads=threads, seed=0)
