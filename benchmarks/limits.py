"""``limits``: the node's resident memory after one huge chunked request body (no Content-Length).

A ``fabstir node serve`` process (its own PID, so its RSS is its own) gets ``POST /v1/inference`` with a
chunked body of ``--body-mib`` MiB (default 300) sent in 1 MiB pieces while the response is read. Reported:
the node's VmRSS before and a second after, its peak (VmHWM), how much of the body left the client before the
node answered or closed, and the answer's status and code. A node that reads the body whole before checking
its size grows by about the body's size (and keeps it); one that stops at the limit does not.

Run alone: ``python benchmarks/limits.py [--body-mib N] [--model FILE]`` (one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    LOOPBACK,
    ModelMissingError,
    Settings,
    close_all,
    load_average,
    log,
    resolve_model,
    start_node,
)

MIB = 1 << 20


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB (Linux /proc)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


async def _send_chunked(port: int, body_mib: int) -> tuple[int, int | None, str | None]:
    """Send the chunked body while reading the answer; returns (bytes of body sent, status, error code)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(b"POST /v1/inference HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                 b"transfer-encoding: chunked\r\n\r\n")
    piece = b"%x\r\n%s\r\n" % (MIB, b" " * MIB)
    answer = asyncio.ensure_future(_read_answer(reader))
    sent = 0
    try:
        while sent < body_mib * MIB and not answer.done():
            writer.write(piece)
            await writer.drain()
            sent += MIB
        if not answer.done():
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass
    try:
        status, body = await asyncio.wait_for(answer, 120)
    except (ConnectionError, asyncio.IncompleteReadError):
        status, body = None, b""
    writer.close()
    try:
        code = str(json.loads(body)["details"]["code"])
    except (ValueError, KeyError, TypeError):
        code = None
    return sent, status, code


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def run_limits(settings: Settings, body_mib: int = 300) -> dict[str, object]:
    """Start a node, send it one ``body_mib`` MiB chunked body, and report its memory."""
    process, url = await start_node(settings, parallel=1, threads=1)
    try:
        port = int(url.rsplit(":", 1)[1])
        await asyncio.sleep(1.0)
        before = _status_kib(process.pid)
        log(f"node RSS before: {before['VmRSS'] / 1024:.1f} MiB; sending a {body_mib} MiB chunked body")
        sent, status, code = await _send_chunked(port, body_mib)
        await asyncio.sleep(1.0)
        process.check_alive()
        after = _status_kib(process.pid)
    finally:
        process.close()
    return {
        "body_mib": body_mib, "body_sent_mib": round(sent / MIB, 1), "status": status, "code": code,
        "rss_before_mib": round(before["VmRSS"] / 1024, 1), "rss_after_mib": round(after["VmRSS"] / 1024, 1),
        "rss_growth_mib": round((after["VmRSS"] - before["VmRSS"]) / 1024, 1),
        "rss_peak_mib": round(after["VmHWM"] / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/limits.py", description=__doc__.splitlines()[0])
    parser.add_argument("--body-mib", type=int, default=300, help="size of the chunked body (default 300)")
    parser.add_argument("--model", help="GGUF file (default: ../shared/models/stories260K.gguf)")
    parser.add_argument("--allow-fallback-model", action="store_true",
                        help="measure a tiny random-weight GGUF when the default model is missing")
    args = parser.parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="fabstir-bench-") as scratch:
            try:
                model, fallback = resolve_model(args.model, Path(scratch), allow_fallback=args.allow_fallback_model)
            except ModelMissingError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            before = load_average()
            result = asyncio.run(run_limits(Settings(model=model, model_fallback=fallback), args.body_mib))
            result["load_average"] = {"before": before, "after": load_average()}
    finally:
        close_all()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
