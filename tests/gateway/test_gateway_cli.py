"""``fabstir gateway`` as a real subprocess: refuses to serve without an API key, serves an OpenAI client with one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import openai

from fabstir.node.server import NodeServer

FABSTIR = [sys.executable, "-m", "fabstir.cli"]


def test_no_api_key_no_gateway(tmp_path: Path) -> None:
    result = subprocess.run([*FABSTIR, "gateway", "--host", "http://127.0.0.1:9", "--port", "0", "--keys-file",
                             str(tmp_path / "none.json")],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "API_KEY_REQUIRED" in result.stderr and "Traceback" not in result.stderr


async def test_gateway_serves_an_openai_client(node: NodeServer) -> None:
    process = await asyncio.create_subprocess_exec(
        *FABSTIR, "gateway", "--host", node.url, "--port", "0", "--api-key", "sk-cli",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stderr is not None
        async with asyncio.timeout(120):
            while True:
                line = (await process.stderr.readline()).decode()
                assert line, "the gateway exited before serving"
                found = re.search(r"OpenAI base_url (http://127\.0\.0\.1:\d+/v1)", line)
                if found:
                    break
        async with openai.AsyncOpenAI(base_url=found.group(1), api_key="sk-cli", max_retries=0) as client:
            answer = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
        assert answer.usage is not None and answer.usage.completion_tokens == 4
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


def test_keys_are_created_capped_and_listed(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"

    def fabstir(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FABSTIR, "gateway", "keys", *args, "--keys-file", str(keys)], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ})

    created = fabstir("create", "--name", "alice", "--cap", "5000")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-fab-") and key not in keys.read_text(), "the file keeps only the key's hash"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert fabstir("create", "--name", "alice").returncode == 1, "names are unique"
    assert fabstir("cap", "--name", "alice", "--cap", "7000").returncode == 0
    listed = json.loads(fabstir("list", "--json").stdout)
    assert listed == [{"name": "alice", "cap": 7000, "spent": 0, "left": 7000}]
