"""An engine that forwards to an OpenAI-compatible inference server the host already runs.

vLLM, llama.cpp's ``llama-server``, Ollama, SGLang and ``python -m llama_cpp.server`` all serve
``POST /v1/completions`` with Server-Sent Events. The node renders its own prompt (template, history, the
continuation) and sends it as a raw completion; every streamed piece becomes a :class:`TokenPiece`. Closing
the stream (a cancel, or a client gone) ends the upstream's generation. Prompt tokens are counted with the
upstream's tokenize endpoint (``/extras/tokenize`` of llama_cpp.server, ``/tokenize`` of vLLM and
llama-server), found once at start.

Billing counts what the upstream says it generated (``usage.completion_tokens``, asked for with
``stream_options.include_usage``), checked against the node's own count: a streamed piece counts one token
as it goes out; if the upstream reports more tokens than pieces (several tokens per chunk), the difference is
billed at the end, but never more than the upstream's tokenizer finds in the text it sent (plus one per
piece, for tokens that decode to nothing). An upstream that reports no usage is billed by pieces.

Not possible through the OpenAI API: priming the repeat penalty for a continued answer (so a continuation
is a continuation, not guaranteed token-identical), and a per-request seed on servers that ignore ``seed``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from fabstir.errors import EngineError
from fabstir.node.engines.base import Finished, GenerationEvent, GenerationParams, TokenPiece

__all__ = ["UpstreamEngine"]


class UpstreamEngine:
    """One connection to an OpenAI-compatible server; the node's pool runs several for concurrency."""

    def __init__(self, base_url: str, model: str, *, context_window: int, model_id: str | None = None,
                 timeout: float = 300.0, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._model_id = model_id or model
        self._context_window = context_window
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=10.0),
                                  headers=headers)
        self._tokenize = self._find_tokenizer()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_tokens(self, text: str) -> int:
        return self._tokenize(text)

    def generate(self, prompt: str, params: GenerationParams, cancelled: Callable[[], bool]
                 ) -> Iterator[GenerationEvent]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed, "stream": True,
            "stream_options": {"include_usage": True}, "repeat_penalty": params.repeat_penalty,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        pieces = 0
        text: list[str] = []
        reported: int | None = None
        reason = "length"
        try:
            with self._http.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise EngineError(f"the upstream refused ({response.status_code}): {response.text[:300]}",
                                      code="UPSTREAM_ERROR")
                for line in response.iter_lines():
                    if cancelled():
                        reason = "cancelled"
                        break  # leaving the block closes the stream: the upstream stops generating
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise EngineError(f"the upstream failed: {event['error']}", code="UPSTREAM_ERROR")
                    usage = event.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        reported = usage["completion_tokens"]
                    for choice in event.get("choices") or []:
                        piece = choice.get("text") or ""
                        if piece:
                            pieces += 1
                            text.append(piece)
                            yield TokenPiece(piece, 1)
                        if choice.get("finish_reason"):
                            reason = "stop" if choice["finish_reason"] == "stop" else "length"
        except httpx.HTTPError as exc:
            raise EngineError(f"the upstream at {self.base_url} failed: {exc}", code="UPSTREAM_UNAVAILABLE") from None
        except ValueError as exc:
            raise EngineError(f"the upstream sent a malformed event: {exc}", code="UPSTREAM_ERROR") from None
        billed = pieces
        if reported is not None and reported > pieces and reason != "cancelled":
            most = pieces + (self._tokenize("".join(text)) if text else 0)
            extra = min(reported, most) - pieces
            if extra > 0:
                yield TokenPiece("", extra)
                billed += extra
        yield Finished(reason, billed)  # type: ignore[arg-type]

    def close(self) -> None:
        self._http.close()

    def _find_tokenizer(self) -> Callable[[str], int]:
        """The upstream's tokenize endpoint, as a token counter (tried once, at start).

        Raises:
            EngineError: UPSTREAM_UNAVAILABLE (unreachable), UPSTREAM_NO_TOKENIZER (no endpoint known).
        """
        attempts: list[tuple[str, Callable[[str], dict[str, Any]], Callable[[Any], int]]] = [
            ("/extras/tokenize", lambda t: {"input": t, "model": self.model}, lambda r: len(r["tokens"])),
            ("/tokenize", lambda t: {"model": self.model, "prompt": t}, lambda r: int(r["count"])),
            ("/tokenize", lambda t: {"content": t}, lambda r: len(r["tokens"])),
        ]
        for path, request, count in attempts:
            try:
                response = self._http.post(path, json=request("probe"))
                if response.status_code == 200:
                    count(response.json())
                    return self._counter(path, request, count)
            except httpx.ConnectError as exc:
                raise EngineError(f"cannot reach the upstream at {self.base_url}: {exc}",
                                  code="UPSTREAM_UNAVAILABLE") from None
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
        raise EngineError(f"the upstream at {self.base_url} has no tokenize endpoint this node knows "
                          "(/extras/tokenize, /tokenize)", code="UPSTREAM_NO_TOKENIZER")

    def _counter(self, path: str, request: Callable[[str], dict[str, Any]],
                 count: Callable[[Any], int]) -> Callable[[str], int]:
        def tokens(text: str) -> int:
            try:
                response = self._http.post(path, json=request(text))
                response.raise_for_status()
                return count(response.json())
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                raise EngineError(f"the upstream could not count tokens: {exc}", code="UPSTREAM_ERROR") from None

        return tokens
