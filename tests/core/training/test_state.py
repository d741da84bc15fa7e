"""core/training/state.py: only the first process reports; every process keeps its warnings."""

from __future__ import annotations

from qdtool.core.events import Info, Warn
from qdtool.core.training.state import Reporter, peak_memory_gb


def test_only_the_first_process_reports_but_every_one_keeps_its_warnings():
    seen = []
    first, other = Reporter(seen.append, main=True), Reporter(seen.append, main=False)
    for reporter in (first, other):
        reporter.info("loading")
        reporter.warn("2 sample(s) dropped")
    assert seen == [Info("loading"), Warn("2 sample(s) dropped")]
    assert first.warnings == other.warnings == ["2 sample(s) dropped"]
    Reporter(None, main=True).warn("no caller")  # no callback: nothing to call, the warning is still kept


def test_peak_memory_on_a_cpu_is_this_process_rss():
    import resource

    assert peak_memory_gb("cpu") == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 > 0.01
