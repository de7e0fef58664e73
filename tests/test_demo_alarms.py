"""Regression alarms on the trained demo (configs/world.yaml): a selection that is broken shows
in the records of a real run. The demo as shipped sets off no alarm; each deliberate fault
below, put into the selection code for one run, sets off at least one. The models' answers are cached across the runs (tests/doubles.AnswerCache): a fault
changes which questions the judge is asked, and only new questions reach the models."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rescue_eval import config
from rescue_eval.core import search, selection
from rescue_eval.core.protocols import ROLE_NAMES
from rescue_eval.core.search import Roles, search_sample
from rescue_eval.core.selection import resolved  # the original, whatever a fault patches
from rescue_eval.models import build_role
from rescue_eval.outdir import datamodule_of, settings_of
from tests.doubles import AnswerCache

pytestmark = pytest.mark.cli



@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # the first 48 scenes: each alarm is read from every record, and five runs of all 240 would
    # add minutes to the tier for no alarm that 48 do not set off
    cfg, _ = config.parse(["--config", "configs/world.yaml", "--output", str(tmp_path_factory.mktemp("out")),
                           "--data.limit", "48"])
    module = datamodule_of(cfg)
    module.prepare_data()
    module.setup()
    samples = [module.dataset[i] for i in range(len(module.dataset))]
    roles = Roles(**{role: AnswerCache(build_role(role, getattr(cfg, role))) for role in ROLE_NAMES})
    return samples, roles, settings_of(cfg)


def run_demo(demo) -> list[dict]:
    samples, roles, settings = demo
    return [search_sample(dataclasses.replace(sample), roles, settings) for sample in samples]


def giou(records: list[dict], n: int, key: str = "iou") -> float:
    return float(np.mean([r["sweep"][str(n)][key] for r in records]))


def alarms(records: list[dict]) -> list[str]:
    """What a broken selection shows in the trained demo's records, one line per alarm. They are
    read from what each record says was chosen, scored and asked, not from the scores: the
    verifier twins are too weak for a score to tell a broken selection from theirs (README)."""
    top = str(max(int(n) for n in records[0]["sweep"]))
    found = []
    past = [(r["id"], n) for r in records for n, e in r["sweep"].items() if e.get("index") is not None
            and e["index"] >= int(n)]
    if past:
        found.append(f"a selection at N looked past the first N hypotheses: {past[:3]}")
    # a set the judge was not asked about is chosen as the heuristic chooses it: the best hybrid
    unjudged = [(r["id"], n) for r in records for n, e in r["sweep"].items() if not e["judge_calls"]
                and e["chosen"] is not None and (e["chosen"] != e["heuristic"] or len(e["hybrid"]) > 1
                                                 and e["chosen"] != int(np.argmax(resolved(e["hybrid"]))))]
    if unjudged:
        found.append(f"a choice made without the judge is not the best hybrid score: {unjudged[:3]}")
    promoted = [r for r in records if r["sweep"][top]["judge_calls"]
                and r["sweep"][top]["chosen"] != int(np.argmax(resolved(r["sweep"][top]["hybrid"])))]
    if not promoted:
        found.append("no duel ever changed a choice: the tournament ignores the judge")
    unearned = [r["id"] for r in promoted if not any(
        a["kind"] == "duel" and {"A": a["candidates"][0], "B": a["candidates"][1]}.get(a["value"])
        == r["sweep"][top]["chosen"] for a in r["judge"])]
    if unearned:
        found.append(f"a challenger was chosen without winning a duel: {unearned[:3]}")
    return found


def test_the_trained_demo_sets_off_no_alarm(demo):
    records = run_demo(demo)
    assert not [r for r in records if r["failure"]]
    assert alarms(records) == []
    # the planner's hypotheses differ (seeds, temperatures, strategies): the best of 8 is far better than the first
    assert giou(records, 8, "oracle_iou") > giou(records, 1) + 0.15


def random_selector(self, sizes, agree, siglip, judge, settings):
    rng = np.random.default_rng(0)
    return {n: selection.Selection(int(rng.integers(k)) if k else None) for n, k in sizes.items()}


def looks_past_n(original):
    def sweep(sizes, agree, siglip, judge, settings):
        everything = original({max(sizes): sizes[max(sizes)]}, agree, siglip, judge, settings)[max(sizes)]
        return {n: everything for n in sizes}
    return sweep


@pytest.mark.parametrize("fault", ["random selector", "reversed hybrid score", "tournament ignores the judge",
                                   "per-N sweep looks past N"])
def test_each_deliberate_fault_sets_off_an_alarm(demo, fault, monkeypatch):
    if fault == "random selector":
        monkeypatch.setattr(selection.ComparativeSelection, "select_sweep", random_selector)
    elif fault == "reversed hybrid score":
        resolved = selection.resolved
        monkeypatch.setattr(selection, "resolved", lambda scores: -resolved(scores))
    elif fault == "tournament ignores the judge":
        play = selection._Tournament.play
        monkeypatch.setattr(selection._Tournament, "play", lambda self, result: play(self, None))
    else:
        monkeypatch.setattr(search, "select_sweep", looks_past_n(search.select_sweep))
    assert alarms(run_demo(demo)), f"the fault '{fault}' went unnoticed"
