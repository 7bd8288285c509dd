"""Pure tests: exact money arithmetic, host metadata validation, the SDK's billing tracker."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabstir.chain.metadata import MetadataError, build_host_metadata, parse_host_metadata
from fabstir.chain.money import format_units, max_tokens_for_deposit, parse_units, settle, token_cost
from fabstir.chain.records import JobStatus, SessionJob
from fabstir.errors import ConfigError, SessionError
from fabstir.protocol import Usage
from fabstir.sdk.billing import BillingTracker
from fabstir.sdk.types import InferenceResult


@pytest.mark.parametrize("text,decimals,expected", [
    ("1.5", 18, 1_500_000_000_000_000_000), ("0.000001", 6, 1), ("42", 6, 42_000_000), ("1_000", 0, 1000),
])
def test_parse_units(text: str, decimals: int, expected: int) -> None:
    assert parse_units(text, decimals) == expected
    assert parse_units(format_units(expected, decimals), decimals) == expected


@pytest.mark.parametrize("bad", ["abc", "-1", "0.0000001", "1e999999", "1e72", "NaN", "Infinity", ""])
def test_parse_units_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_units(bad, 6)


def test_format_units() -> None:
    assert format_units(1_500_000_000_000_000_000, 18, "ETH") == "1.5 ETH"
    assert format_units(5, 6) == "0.000005" and format_units(0, 18) == "0" and format_units(-25, 1) == "-2.5"


@given(tokens=st.integers(0, 10**12), price=st.integers(1, 10**22), fee=st.integers(0, 10_000),
       extra=st.integers(0, 10**24))
def test_settlement_always_adds_up(tokens: int, price: int, fee: int, extra: int) -> None:
    deposit = token_cost(tokens, price) + extra
    split = settle(tokens, price, fee, deposit)
    assert split.host_earnings + split.treasury_fee + split.refund == deposit
    assert min(split.host_earnings, split.treasury_fee, split.refund) >= 0
    assert split.host_payment == token_cost(tokens, price) <= deposit
    if deposit * 1000 >= tokens * price:
        assert max_tokens_for_deposit(deposit, price) >= tokens


def test_metadata_schema() -> None:
    meta = parse_host_metadata(build_host_metadata("h", models=["a/b.gguf"], publicKey="02" + "ab" * 32,
                                                   hardware={"gpu": "none"}))
    assert meta.name == "h" and meta.models == ("a/b.gguf",) and meta.extra == {"hardware": {"gpu": "none"}}
    assert meta.public_key == "02" + "ab" * 32


@pytest.mark.parametrize("text,fragment", [
    ("not json", "not JSON"),
    ("[1]", "is not of type 'object'"),
    ("{}", "'name' is a required property"),
    (json.dumps({"name": ""}), "name"),
    (json.dumps({"name": "x", "publicKey": "04abcd"}), "publicKey"),
    (json.dumps({"name": "x", "models": "one"}), "models"),
    (json.dumps({"name": "x" * 20_000}), "exceeds"),
])
def test_bad_metadata_is_reported(text: str, fragment: str) -> None:
    with pytest.raises(MetadataError) as info:
        parse_host_metadata(text)
    assert fragment in info.value.message


def _job(deposit: int = 10**15, price: int = 2_000_000) -> SessionJob:
    return SessionJob(job_id=7, depositor="0x" + "11" * 20, host="0x" + "22" * 20, payment_token=None,
                      deposit=deposit, price_per_token=price, tokens_used=0, max_duration=60, start_time=0,
                      last_proof_time=0, proof_interval=100, status=JobStatus.ACTIVE, model_id=None,
                      last_proof_hash=b"\0" * 32)


def _result(tokens: int, prompt_tokens: int = 10) -> InferenceResult:
    return InferenceResult(text="x", finish_reason="length", usage=Usage(prompt_tokens, tokens, 512),
                           tokens_used=tokens, message_index=0, ttft_ms=1.0, tokens_per_s=1.0, session_id="7",
                           request_id="r")


async def test_billing_tracker() -> None:
    tracker = BillingTracker()
    events = []
    tracker.on_billing(events.append)
    tracker.track_session(_job(deposit=10**6, price=2_000_000))  # covers 500 tokens
    await tracker.record(_result(120))
    await tracker.record(_result(80, prompt_tokens=30))
    assert tracker.get_token_usage(7) == 200
    assert tracker.get_session_cost("7") == 200 * 2_000_000 // 1000 == 400_000
    assert tracker.get_remaining_tokens(7) == 300
    stats = tracker.get_usage_stats(7)
    assert (stats.prompts, stats.prompt_tokens, stats.average_completion_tokens) == (2, 40, 100.0)
    assert [e.total_cost for e in events] == [240_000, 400_000] and events[-1].remaining_tokens == 300
    assert tracker.estimate_tokens("12345678") == 2 and tracker.estimate_tokens("") == 0
    with pytest.raises(SessionError):
        tracker.get_token_usage(8)
