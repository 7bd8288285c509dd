"""End to end: a real node on 127.0.0.1 signs each answer's activation fingerprint; the SDK receives it and
verifies it with the named model; a node that serves another GGUF under the named model's id is caught, by the
SDK and by ``fabstir verify`` (exit 3, the signed receipt as evidence)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fabstir.cli.main import main
from fabstir.cli.verify import CAUGHT
from fabstir.errors import FingerprintError
from fabstir.fingerprints import Fingerprint, Verifier
from fabstir.node.engines.templates import get_template
from fabstir.node.server import NodeServer
from fabstir.protocol import ChatTurn, Feature
from fabstir.protocol.signing import Receipt, SignatureError, text_digest
from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.sdk.types import InferenceResult
from fabstir.sdk.verification import answer_record, save_record, verify_record, verify_result
from fabstir.testing.substitution import quantize_gguf
from fabstir.testing.tiny_gguf import write_tiny_gguf
from tests.conftest import NodeFactory

OPTIONS = PromptOptions(max_tokens=40, temperature=0.8)
QUESTIONS = ("Once upon a time", "Tell me about the king", "Where did the cat go?")


def rendered(question: str) -> str:
    """The prompt the node's template (``plain``) makes of a first question, as the client expects it."""
    return get_template("plain").render([ChatTurn("user", question)])


async def ask(node: NodeServer, session: str, question: str) -> InferenceResult:
    async with FabstirSDK(default_options=OPTIONS) as sdk:
        await sdk.inference.connect_to_session(session, node.url,
                                               host_signing_key=node.runtime.signing_public_key)
        assert Feature.ACTIVATION_FINGERPRINT in sdk.inference._session(None).features
        return await sdk.inference.send_prompt(question)


async def test_the_sdk_receives_a_signed_fingerprint_and_verifies_it(node: NodeServer, tiny_model: Path) -> None:
    with Verifier(tiny_model, threads=1) as verifier:
        for number, question in enumerate(QUESTIONS):
            result = await ask(node, f"honest-{number}", question)
            receipt = result.receipt
            assert receipt is not None and receipt.fingerprint is not None
            assert receipt.prompt_sha256 == text_digest(rendered(question))
            fingerprint = Fingerprint.from_text(receipt.fingerprint)
            assert len(fingerprint.tokens) == result.tokens_used == 40
            verdict = verify_result(verifier, rendered(question), result,
                                    expected_key=node.runtime.signing_public_key)
            assert verdict.honest, verdict.to_json()
            assert len(verdict.chunks) == 2  # 39 states: 32 + 7
            assert not verify_result(verifier, rendered("another question"), result).honest


async def test_a_batching_node_signs_fingerprints_of_answers_decoded_together(node_factory: NodeFactory,
                                                                              tiny_model: Path) -> None:
    """``engine = "llama-batch"``: three answers decoded in one context at once; each signed receipt's
    fingerprint passes the check with the named model."""
    batching = await node_factory(engine="llama-batch", parallel=3)
    results = await asyncio.gather(*(ask(batching, f"batch-{n}", q) for n, q in enumerate(QUESTIONS)))
    with Verifier(tiny_model, threads=1) as verifier:
        for question, result in zip(QUESTIONS, results):
            assert result.receipt is not None and result.receipt.fingerprint is not None
            verdict = verify_result(verifier, rendered(question), result,
                                    expected_key=batching.runtime.signing_public_key)
            assert verdict.honest, verdict.to_json()


async def test_a_tampered_fingerprint_breaks_the_signature(node: NodeServer, tiny_model: Path) -> None:
    result = await ask(node, "tamper", QUESTIONS[0])
    record = answer_record(rendered(QUESTIONS[0]), result)
    fingerprint = Fingerprint.from_text(record["receipt"]["fingerprint"])
    other = await ask(node, "tamper-2", QUESTIONS[1])
    assert other.receipt is not None and other.receipt.fingerprint != fingerprint.to_text()
    record["receipt"]["fingerprint"] = other.receipt.fingerprint
    with pytest.raises(SignatureError) as refused:
        verify_record(tiny_model, record)
    assert refused.value.code == "RECEIPT_INVALID"
    record["receipt"].pop("fingerprint")
    record["receipt"].pop("prompt_sha256")
    with pytest.raises(SignatureError):  # dropping it is tampering too
        verify_record(tiny_model, record)


async def test_a_node_serving_another_gguf_under_the_named_id_is_caught(
        node_factory: NodeFactory, tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    random_weights = write_tiny_gguf(tmp_path / "random" / "tiny.gguf", seed=1, context_length=512)
    quantized = quantize_gguf(tiny_model, tmp_path / "tiny.gguf", "q8_0")
    with Verifier(tiny_model, threads=1) as verifier:
        for cheat in (random_weights, quantized):
            node = await node_factory(model_path=str(cheat), parallel=1)
            assert node.runtime.inference.model_id == "tiny"  # it advertises the named model
            for number, question in enumerate(QUESTIONS):
                result = await ask(node, f"cheat-{cheat.parent.name}-{number}", question)
                verdict = verify_result(verifier, rendered(question), result)
                assert not verdict.honest, verdict.to_json()


async def test_fabstir_verify_exit_codes_and_evidence(node_factory: NodeFactory, node: NodeServer,
                                                      tiny_model: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    honest = save_record(tmp_path / "honest.json", rendered(QUESTIONS[0]), await ask(node, "cli-1", QUESTIONS[0]))
    assert main(["verify", str(honest), "--model", str(tiny_model), "--threads", "1", "--json"]) == 0
    output = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert output["honest"] is True and all(c["passed"] for c in output["chunks"])

    cheat = await node_factory(model_path=str(quantize_gguf(tiny_model, tmp_path / "tiny.gguf", "q4_0")),
                               parallel=1)
    caught = save_record(tmp_path / "caught.json", rendered(QUESTIONS[1]), await ask(cheat, "cli-2", QUESTIONS[1]))
    assert main(["verify", str(caught), "--model", str(tiny_model), "--threads", "1", "--json"]) == CAUGHT
    output = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert output["honest"] is False and "chunks differ" in output["reason"]
    assert output["evidence"]["receipt"]["key"] == cheat.runtime.signing_public_key
    assert main(["verify", str(caught), "--model", str(tiny_model), "--threads", "1"]) == CAUGHT
    assert "CAUGHT" in capsys.readouterr().out

    (tmp_path / "bad.json").write_text("{}")
    assert main(["verify", str(tmp_path / "bad.json"), "--model", str(tiny_model)]) == 1
    assert "FINGERPRINT_MALFORMED" in capsys.readouterr().err


def test_a_receipt_without_a_fingerprint_keeps_its_old_wire_form() -> None:
    plain = Receipt(host="", model="m", session_id="s", message_index=0, tokens=1, price_per_token=None,
                    text_sha256="00", key="")
    assert set(plain.to_wire()) == {"host", "model", "session_id", "message_index", "tokens", "price_per_token",
                                    "text_sha256", "key", "sig"}
    result = InferenceResult(text="x", finish_reason="length", usage=None, tokens_used=1, message_index=0,
                             ttft_ms=None, tokens_per_s=0.0, session_id="s", request_id="r", receipt=plain)
    with pytest.raises(FingerprintError) as missing:
        verify_result("unused.gguf", "p", result)
    assert missing.value.code == "FINGERPRINT_MISSING"
