"""What ``fabstir`` prints: tables, ``--json`` for scripts, progress bars, help, and usage errors.

Outside a terminal (pipes, files, these tests) the output stays parseable: no colour codes, no trailing
spaces, no redrawn bars; on a terminal (``FORCE_COLOR`` makes rich treat the capture as one) tables get
borders and progress is a live bar on stderr.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from fabstir.cli.main import main
from fabstir.cli.output import key_value_table, print_json, print_table, progress_bar, progress_lines, table
from fabstir.discovery.http_client import HttpDiscoveryClient
from fabstir.discovery.http_service import serve_discovery
from fabstir.protocol.announcement import sign_announcement

FABSTIR = [sys.executable, "-m", "fabstir.cli"]
ANSI = re.compile(r"\x1b\[")


def plain(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    monkeypatch.setenv("COLUMNS", "120")


# --- tables -----------------------------------------------------------------------------------------------------


def test_table_outside_a_terminal_is_plain_aligned_columns(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    plain(monkeypatch)
    listing = table("job", "host", "cost", title="2 session(s)", right=("job", "cost"))
    listing.add_row("1", "0x" + "ab" * 20, "48000000")
    listing.add_row("12", "0x" + "cd" * 20, "7")
    print_table(listing)
    out = capsys.readouterr().out
    assert not ANSI.search(out) and "│" not in out and "─" not in out
    lines = out.splitlines()
    assert lines[0] == "2 session(s)"
    assert all(line == line.rstrip() for line in lines)
    header, first, second = lines[1:4]
    assert header.split() == ["job", "host", "cost"]
    assert first.split() == ["1", "0x" + "ab" * 20, "48000000"] and second.split() == ["12", "0x" + "cd" * 20, "7"]
    assert first.index("0x") == second.index("0x") == header.index("host"), "columns line up"
    assert first.endswith("48000000") and second.endswith("       7"), "numbers are right-aligned"


def test_wide_table_is_not_wrapped_outside_a_terminal(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    plain(monkeypatch)
    monkeypatch.setenv("COLUMNS", "40")
    columns = [f"column{i}" for i in range(12)]
    listing = table(*columns)
    listing.add_row(*(f"value-{i}-{'x' * 8}" for i in range(12)))
    print_table(listing)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split() == [f"value-{i}-{'x' * 8}" for i in range(12)]


def test_table_on_a_terminal_has_borders_and_colour(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    terminal(monkeypatch)
    listing = table("name", "cap", right=("cap",))
    listing.add_row("alice", "7000")
    print_table(listing)
    out = capsys.readouterr().out
    assert ANSI.search(out) and "─" in out and "alice" in out and "7000" in out


def test_key_value_table_is_a_receipt(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    plain(monkeypatch)
    print_table(key_value_table([("tokens served", "39"), ("tokens billed", "39 (as served)")], title="receipt"))
    assert capsys.readouterr().out == "receipt\ntokens served      39\ntokens billed      39 (as served)\n"


def test_json_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    value = {"text": "x" * 500, "nested": [{"a": 1}, {"b": None}], "big": 10**30}
    print_json(value)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out) == value


# --- progress ---------------------------------------------------------------------------------------------------


def test_progress_outside_a_terminal_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    plain(monkeypatch)
    with progress_bar("unpacking the model", 100, unit="bytes") as advance:
        for done in range(0, 101, 10):
            advance(done, 100, "part")
    with progress_lines("building keys", 3) as line:
        line("zk: setup")
        line("zk: keys ready")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["[fabstir] unpacking the model", "[fabstir] zk: setup",
                                         "[fabstir] zk: keys ready"]


def test_progress_on_a_terminal_is_a_bar_on_stderr(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    terminal(monkeypatch)
    with progress_bar("deploying the contracts", 4) as advance:
        for done in range(1, 5):
            advance(done, 4, f"step {done}")
    with progress_lines("building keys", 2) as line:
        line("zk: setup")
    captured = capsys.readouterr()
    assert captured.out == "", "a bar never touches stdout, where the data goes"
    assert "deploying the contracts" in captured.err and "4/4" in captured.err and "100%" in captured.err
    assert "building keys" in captured.err and "2/2" in captured.err


def test_progress_bar_is_stopped_by_an_error(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    terminal(monkeypatch)
    with pytest.raises(RuntimeError), progress_bar("failing", 10) as advance:
        advance(3, 10, "")
        raise RuntimeError("boom")
    assert "failing" in capsys.readouterr().err


# --- commands ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    [], ["demo"], ["chat"], ["hosts"], ["sessions"], ["spend"], ["node"], ["node", "serve"], ["node", "register"],
    ["node", "earnings"], ["discovery", "serve"], ["gateway"], ["gateway", "keys"], ["gateway", "keys", "list"],
    ["devnet"], ["devnet", "up"], ["devnet", "status"], ["devnet", "down"], ["node", "proof-keys"], ["proofs"],
    ["verify"],
])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    plain(monkeypatch)
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: fabstir" in out and "--help" in out
    if command in (["hosts"], ["sessions"], ["spend"], ["devnet", "status"], ["gateway", "keys", "list"], ["proofs"],
                   ["verify"], ["node", "earnings"]):
        assert "--json" in out


def test_usage_error_is_one_coded_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hosts", "--bogus"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: USAGE: No such option: --bogus (see: fabstir hosts --help)"]
    assert main(["hosts", "--strategy", "priciest"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: USAGE: ") and "cheapest" in line
    assert main(["node", "register", "--network", "x.json"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: USAGE: ") and "--api-url" in line


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert re.fullmatch(r"fabstir \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_gateway_keys_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    plain(monkeypatch)
    keys = str(tmp_path / "keys.json")
    assert main(["gateway", "keys", "create", "--name", "alice", "--cap", "7000", "--keys-file", keys]) == 0
    assert main(["gateway", "keys", "create", "--name", "bob", "--keys-file", keys]) == 0
    capsys.readouterr()
    assert main(["gateway", "keys", "list", "--keys-file", keys]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 key(s) in ") and lines[1].split() == ["name", "cap", "spent", "left"]
    assert lines[2].split() == ["alice", "7000", "0", "7000"] and lines[3].split() == ["bob", "none", "0", "-"]
    assert main(["gateway", "keys", "list", "--json", "--keys-file", keys]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "alice", "cap": 7000, "spent": 0, "left": 7000},
                                                   {"name": "bob", "cap": None, "spent": 0, "left": None}]


async def test_hosts_table_and_json_from_a_discovery_service() -> None:
    """``fabstir hosts`` as a real process against a real discovery service with two signed announcements."""
    now = time.time_ns() // 1_000_000
    async with serve_discovery() as service, HttpDiscoveryClient(service.url) as client:
        for i, price in ((1, 300), (2, 100)):
            await client.announce(sign_announcement(SigningKey(bytes([i]) * 32), host="0x" + f"{i:02x}" * 20,
                                                    api_url=f"http://127.0.0.1:{9000 + i}", now_ms=now, ttl_s=120,
                                                    models=["a/x.gguf"], price_per_token=price))

        async def fabstir(*args: str) -> tuple[str, str]:
            process = await asyncio.create_subprocess_exec(
                *FABSTIR, "hosts", "--discovery-url", service.url, "--no-ping", "--strategy", "cheapest", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(process.communicate(), 120)
            assert process.returncode == 0, err.decode()
            return out.decode(), err.decode()

        out, err = await fabstir()
        assert not ANSI.search(out + err)
        lines = out.splitlines()
        assert lines[0].startswith("2 host(s), best first")
        assert lines[1].split()[:5] == ["#", "host", "url", "price", "stake"]
        rows = [line.split() for line in lines[2:4]]
        assert [row[0] for row in rows] == ["1*", "2"] and [row[3] for row in rows] == ["100", "300"]
        assert rows[0][2] == "http://127.0.0.1:9002" and rows[0][-1] == "http"
        assert "* chosen by strategy 'cheapest'" in out and "sources: http: ok 2 host(s)" in out

        out, _ = await fabstir("--json")
        listing = json.loads(out)
        assert listing["chosen"] == "0x" + "02" * 20 and listing["strategy"] == "cheapest"
        assert [h["price_per_token"] for h in listing["hosts"]] == [100, 300]


def test_free_demo_output_in_a_pipe(tiny_model: Path) -> None:
    """The demo's summary table and its JSON line, through a pipe: no colour, no bar redraws, JSON last."""
    result = subprocess.run([*FABSTIR, "demo", "--free", "--model", str(tiny_model), "--max-tokens", "3", "--json"],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert not ANSI.search(result.stdout + result.stderr) and "\r" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    summary = json.loads(lines[-1])
    assert summary["completion_tokens"] == 9
    assert "summary" in lines and f"completion_tokens  {summary['completion_tokens']}" in lines
    assert f"model              {summary['model']}" in lines


@pytest.mark.parametrize("argv", [
    ["discovery", "serve", "--port", "0"],
    ["gateway", "--host", "http://127.0.0.1:9", "--port", "0", "--api-key", "sk-test"],
    ["node", "serve", "--port", "0", "--context-window", "256", "--parallel", "1", "--threads", "1"],
], ids=["discovery", "gateway", "node"])
async def test_servers_print_their_url_as_json(argv: list[str], tiny_model: Path) -> None:
    """With ``--json`` a server's first line of stdout is ``{"url": ...}`` once it listens (and it answers there)."""
    import httpx

    if argv[0] == "node":
        argv = [*argv, "--model", str(tiny_model)]
    process = await asyncio.create_subprocess_exec(*FABSTIR, *argv, "--json", stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        assert line, (await process.communicate())[1].decode()
        ready = json.loads(line)
        assert ready["url"].startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as http:
            assert (await http.get(ready["url"] + "/health")).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode in (0, 130)


@pytest.mark.skipif(importlib.util.find_spec("ezkl") is None, reason="ezkl (the proofs extra) is not installed")
def test_proof_keys_are_built_once_under_a_progress_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    plain(monkeypatch)
    assert main(["node", "proof-keys", "--cache-dir", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    built = json.loads(captured.out)
    assert Path(built["directory"]).parent == tmp_path and built["pk_bytes"] > 0 and len(built["vk_sha256"]) == 64
    assert "[fabstir] zk: keys ready in" in captured.err and not ANSI.search(captured.err)
    assert main(["node", "proof-keys", "--cache-dir", str(tmp_path)]) == 0
    again = capsys.readouterr()
    assert built["directory"] in again.out and built["vk_sha256"] in again.out
    assert "keys ready" not in again.err, "built once"
