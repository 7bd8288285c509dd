"""The money rules (:mod:`fabstir.chain.money`): the invariants the SDK's and the node's billing rely on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fabstir.chain.money import (
    BASIS_POINTS,
    MIN_PROVEN_TOKENS,
    PRICE_PRECISION,
    billable_tokens,
    first_claim_minimum,
    max_tokens_for_deposit,
    settle,
    smallest_claim,
    token_cost,
)

tokens = st.integers(0, 10**12)
prices = st.integers(1, 10**22)
fees = st.integers(0, BASIS_POINTS)
deposits = st.integers(0, 10**30)


@given(tokens=tokens, price=prices, fee=fees, deposit=deposits)
def test_the_split_of_a_covered_deposit_adds_up_to_it(tokens: int, price: int, fee: int, deposit: int) -> None:
    tokens = min(tokens, max_tokens_for_deposit(deposit, price))  # the contract never charges past the deposit
    split = settle(tokens, price, fee, deposit)
    assert split.host_earnings + split.treasury_fee + split.refund == deposit
    assert min(split.host_earnings, split.treasury_fee, split.refund) >= 0
    assert split.host_payment == token_cost(tokens, price)
    assert split.treasury_fee * BASIS_POINTS <= split.host_payment * fee  # the fee rounds down


@given(a=tokens, b=tokens, price=prices, other=prices)
def test_cost_is_monotone_in_tokens_and_price(a: int, b: int, price: int, other: int) -> None:
    low, high = sorted((a, b))
    assert 0 <= token_cost(low, price) <= token_cost(high, price)
    assert token_cost(a, min(price, other)) <= token_cost(a, max(price, other))
    assert token_cost(a, price) * PRICE_PRECISION <= a * price < (token_cost(a, price) + 1) * PRICE_PRECISION


@given(deposit=deposits, price=prices)
def test_a_deposit_pays_for_exactly_its_max_tokens(deposit: int, price: int) -> None:
    most = max_tokens_for_deposit(deposit, price)
    assert token_cost(most, price) <= deposit
    assert (most + 1) * price > deposit * PRICE_PRECISION  # one more token is over the deposit at full precision


@given(served=tokens, minimum=st.integers(0, 10**6), covered=st.one_of(st.none(), tokens))
def test_billed_is_nothing_for_nothing_else_at_least_the_minimum_at_most_the_deposit(
        served: int, minimum: int, covered: int | None) -> None:
    billed = billable_tokens(served, minimum, covered)
    if served == 0:
        assert billed == 0
        return
    cap = max(served, minimum) if covered is None else covered
    assert billed <= cap
    assert billed >= min(served, cap) and billed >= min(minimum, cap)
    assert billed in (served, minimum, cap)
    assert billable_tokens(served + 1, minimum, covered) >= billed


@given(interval=st.integers(0, 10**6), covered=st.integers(0, 10**6), submitted=tokens)
def test_claim_minimums(interval: int, covered: int, submitted: int) -> None:
    first = first_claim_minimum(interval, covered)
    assert first == min(max(interval, MIN_PROVEN_TOKENS), covered)
    assert first <= covered
    assert smallest_claim(0, first) == first
    assert smallest_claim(submitted + 1, first) == MIN_PROVEN_TOKENS
    assert smallest_claim(submitted + 1, first, 7) == 7
