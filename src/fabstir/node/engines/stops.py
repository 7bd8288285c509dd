"""Stop-sequence detection over streamed text, with hold-back of possible prefixes."""

from __future__ import annotations

__all__ = ["StopMatcher"]


class StopMatcher:
    """Feed text as it is generated; get back what is safe to release.

    Text that might be the start of a stop sequence is held back until the
    next piece decides it. Once a stop sequence is seen, :attr:`stopped` is
    true and the text before it is released; the stop sequence itself never is.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add ``text``; return the part that can be released now."""
        if not self._stops:
            return text
        self._pending += text
        # The stop that ends first wins (ties: the one that starts first), as if fed one character at a
        # time, so the result does not depend on how the text was split into pieces.
        found = [(i + len(s), i) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if found:
            cut = min(found)[1]
            self.stopped = True
            released, self._pending = self._pending[:cut], ""
            return released
        keep = self._longest_prefix_suffix()
        released = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(released) :]
        return released

    def flush(self) -> str:
        """Release whatever is still held back (generation ended without a stop)."""
        released, self._pending = self._pending, ""
        return released

    def _longest_prefix_suffix(self) -> int:
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:size]):
                    best = size
                    break
        return best
