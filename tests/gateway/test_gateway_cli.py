"""``fabstir gateway`` as a real subprocess: refuses to serve without an API key, serves an OpenAI client with one."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import openai

from fabstir.node.server import NodeServer

FABSTIR = [sys.executable, "-m", "fabstir.cli"]


def test_no_api_key_no_gateway() -> None:
    result = subprocess.run([*FABSTIR, "gateway", "--host", "http://127.0.0.1:9", "--port", "0"],
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
