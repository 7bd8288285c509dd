"""StopMatcher: release streamed text as soon as it cannot be part of a stop sequence; cut before the first stop."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fabstir.node.engines.stops import StopMatcher


def run(stops: tuple[str, ...], pieces: list[str]) -> tuple[list[str], str, bool]:
    """Feed every piece (stopping once a stop is seen, as the engine does); return releases, flush, stopped."""
    matcher = StopMatcher(stops)
    released = []
    for piece in pieces:
        released.append(matcher.feed(piece))
        if matcher.stopped:
            break
    return released, matcher.flush(), matcher.stopped


def expected_output(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Reference: scan one character at a time; at the first position where some stop ends, cut before the
    earliest-starting stop that ends there."""
    stops = tuple(s for s in stops if s)
    for end in range(1, len(text) + 1):
        starts = [end - len(s) for s in stops if text[:end].endswith(s)]
        if starts:
            return text[: min(starts)], True
    return text, False


def test_no_stops_releases_everything_at_once() -> None:
    matcher = StopMatcher(())
    assert matcher.feed("Hello") == "Hello"
    assert matcher.feed(" <end> world\n\n\n") == " <end> world\n\n\n"
    assert matcher.feed("") == ""
    assert matcher.flush() == ""
    assert matcher.stopped is False


def test_empty_stop_strings_are_ignored() -> None:
    matcher = StopMatcher(("", ""))
    assert matcher.feed("anything") == "anything"
    assert matcher.stopped is False
    matcher = StopMatcher(("", "END"))
    assert matcher.feed("x") == "x"
    assert matcher.feed("EN") == ""
    assert matcher.feed("D") == ""
    assert matcher.stopped is True


def test_text_that_cannot_start_a_stop_is_released_immediately() -> None:
    matcher = StopMatcher(("<end>",))
    assert matcher.feed("Hello there") == "Hello there"
    assert matcher.feed(", friend.") == ", friend."
    assert matcher.stopped is False
    assert matcher.flush() == ""


def test_possible_prefix_is_held_then_released() -> None:
    matcher = StopMatcher(("<end>",))
    assert matcher.feed("Hello <") == "Hello "
    assert matcher.feed("e") == ""
    assert matcher.feed("n") == ""
    assert matcher.feed("x") == "<enx"  # "<enx" cannot begin "<end>" any more
    assert matcher.stopped is False
    assert matcher.feed(" <b>") == " <b>"
    assert matcher.flush() == ""


def test_held_prefix_released_up_to_a_new_possible_prefix() -> None:
    matcher = StopMatcher(("<end>",))
    assert matcher.feed("a<e") == "a"
    assert matcher.feed("<en") == "<e"  # the first "<e" is dead, the new "<en" may still be a stop
    assert matcher.feed("d") == ""
    assert matcher.feed(">") == ""
    assert matcher.stopped is True


def test_stop_split_across_several_pieces() -> None:
    matcher = StopMatcher(("<end>",))
    assert matcher.feed("The answer is 42.<") == "The answer is 42."
    assert matcher.feed("en") == ""
    assert matcher.stopped is False
    assert matcher.feed("d>more text") == ""
    assert matcher.stopped is True
    assert matcher.flush() == ""


def test_stop_inside_one_piece() -> None:
    matcher = StopMatcher(("\nUser:",))
    assert matcher.feed("Fine, thanks.\nUser: and you?") == "Fine, thanks."
    assert matcher.stopped is True
    assert matcher.flush() == ""


def test_stop_at_the_very_start() -> None:
    matcher = StopMatcher(("<end>",))
    assert matcher.feed("<end>") == ""
    assert matcher.stopped is True


def test_overlapping_prefixes() -> None:
    """"aaab" with stop "aab": one "a" is released once three are seen, then the stop completes."""
    matcher = StopMatcher(("aab",))
    assert [matcher.feed(c) for c in "aaab"] == ["", "", "a", ""]
    assert matcher.stopped is True


def test_flush_releases_held_text() -> None:
    matcher = StopMatcher(("<end>",))
    assert matcher.feed("abc<en") == "abc"
    assert matcher.flush() == "<en"
    assert matcher.flush() == ""
    assert matcher.stopped is False


def test_flush_after_stop_releases_nothing() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("go STOP go") == "go "
    assert matcher.flush() == ""


def test_multiple_stops_earliest_wins() -> None:
    stops = ("\nUser:", "\nAssistant:", "\n\n\n")
    assert run(stops, ["Hi\nAssistant: x\nUser: y"]) == (["Hi"], "", True)
    assert run(stops, ["Hi\nUser: x\nAssistant: y"]) == (["Hi"], "", True)
    assert run(stops, ["Hi\n", "\n\nUser:"]) == (["Hi", ""], "", True)
    assert run(("STOP", "END"), ["a END b STOP"]) == (["a "], "", True)
    assert run(("STOP", "END"), ["a ST", "OP b END"]) == (["a ", ""], "", True)


def test_hold_back_considers_every_stop() -> None:
    matcher = StopMatcher(("<end>", "</s>"))
    assert matcher.feed("x</") == "x"  # "</" may begin "</s>" (not "<end>")
    assert matcher.feed("e") == "</e"  # no suffix of "</e" begins either stop
    assert matcher.feed("<") == ""  # "<" may begin both
    assert matcher.feed("e") == ""  # "<e" may begin "<end>"
    assert matcher.feed("/s") == "<e/s"  # no suffix of "<e/s" begins either stop
    assert matcher.feed("<") == ""
    assert matcher.feed("/s") == ""
    assert matcher.feed(">") == ""
    assert matcher.stopped is True


def test_stop_that_is_a_prefix_of_another() -> None:
    assert run(("ab", "abc"), ["xab", "c"]) == (["x"], "", True)
    assert run(("abc", "ab"), ["xabc"]) == (["x"], "", True)


@pytest.mark.parametrize("pieces", [["abc"], ["ab", "c"], ["a", "b", "c"], ["a", "bc"], ["", "abc", ""]])
def test_result_does_not_depend_on_how_text_is_split(pieces: list[str]) -> None:
    """Stop "b" completes inside "abc" before "abc" does, so it wins however the text arrives."""
    released, flushed, stopped = run(("abc", "b"), pieces)
    assert "".join(released) + flushed == "a"
    assert stopped is True


def test_non_ascii_text() -> None:
    assert run(("。終",), ["こんにちは。", "終わり"]) == (["こんにちは", ""], "", True)
    assert run(("😀😀",), ["a😀", "b😀"]) == (["a", "😀b"], "😀", False)


alphabet = st.text(alphabet="ab<>\n", max_size=30)
stop_sets = st.lists(st.text(alphabet="ab<>\n", min_size=0, max_size=4), min_size=0, max_size=3).map(tuple)


@st.composite
def split_text(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(alphabet)
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return text, [text[i:j] for i, j in zip(bounds, bounds[1:])]


@settings(max_examples=500, deadline=None)
@given(case=split_text(), stops=stop_sets)
@example(case=("abc", ["abc"]), stops=("abc", "b"))
@example(case=("xaab", ["xa", "ab"]), stops=("aab",))
def test_released_text_is_input_up_to_first_stop(case: tuple[str, list[str]], stops: tuple[str, ...]) -> None:
    text, pieces = case
    expected, expect_stop = expected_output(text, stops)
    matcher = StopMatcher(stops)
    released = ""
    fed = ""
    longest = max((len(s) for s in stops), default=0)
    for piece in pieces:
        fed += piece
        released += matcher.feed(piece)
        # never release anything that might later turn out to be (part of) a stop
        assert expected.startswith(released)
        if matcher.stopped:
            break
        # hold back no more than a proper prefix of the longest stop
        assert len(fed) - len(released) <= max(longest - 1, 0)
    released += matcher.flush()
    assert released == expected
    assert matcher.stopped is expect_stop
