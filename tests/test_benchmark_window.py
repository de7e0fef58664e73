"""The pipeline benchmark's steady window (benchmarks/pipeline.py): rates are slopes over the
window, so samples that finish in clumps are measured at their mean rate wherever the clumps
fall against the window's ends."""
import pytest

from benchmarks.pipeline import steady_state
from benchmarks.pipeline_worker import TICK_S

pytestmark = pytest.mark.unit


def clumped_rank(clump: int, period_s: float, offset_s: float, samples: int, cpu_ms: float) -> list:
    """One rank's ticks: `clump` samples finish together every `period_s` (from `offset_s`),
    and the driver spends `cpu_ms` per sample at an even pace, as a busy rank does."""
    rate = clump / period_s
    ticks, t = [], 0.0
    while True:
        done = min(samples, clump * int(max(0.0, t - offset_s) // period_s))
        ticks.append([t, done, {"driver": cpu_ms / 1000 * rate * t, "transport": 0.0}])
        if done == samples:
            return ticks
        t += TICK_S


@pytest.mark.parametrize("offset_s", [0.0, 0.45, 0.9, 1.35])
def test_clumped_completions_are_measured_at_their_mean_rate(offset_s):
    # 4 ranks, each finishing 12 samples at once every 1.5 s: 8 samples/s in all, 5 ms per sample
    ticks = [clumped_rank(12, 1.5, offset_s + 0.1 * r, 240, 5.0) for r in range(4)]
    steady = steady_state(ticks, in_flight=32)
    assert steady["samples_per_s"] == pytest.approx(4 * 12 / 1.5, rel=0.03)
    for rank in steady["cpu_ms_per_sample"]:
        assert rank["driver"] == pytest.approx(5.0, rel=0.03)


def test_the_window_names_each_ranks_lines_between_its_ends():
    ticks = [clumped_rank(4, 0.5, 0.0, 100, 1.0) for _ in range(2)]
    steady = steady_state(ticks, in_flight=20)
    for n0, n1 in steady["lines"]:
        assert 8 <= n0 <= 12 and 88 <= n1 <= 92  # 20 of 200 done, 20 of 200 left: 10 and 90 per rank
