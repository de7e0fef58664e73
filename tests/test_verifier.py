import numpy as np
import pytest
from PIL import Image

from tests.doubles import RuleJudge
from rescue_eval.core.masks import encode_rle, iou_rows
from rescue_eval.core.agreement import PrefixAgreement
from rescue_eval.core.selection import JudgeMemo, VerifierSettings, pyramid_order, select_sweep

pytestmark = pytest.mark.unit


def box_mask(h, w, x1, y1, x2, y2):
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def naive_iou(masks):
    n = len(masks)
    out = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            u = (masks[i] | masks[j]).sum()
            out[i, j] = (masks[i] & masks[j]).sum() / u if u else 1.0
    return out


def iou_of(masks):
    return np.array(list(iou_rows([encode_rle(m) for m in masks])))


def select(k, agree, siglip, judge, settings):
    """The choice among the first k candidates alone (one N of a sweep)."""
    return select_sweep({k: k}, agree, siglip, judge, settings)[k]


def ones(*sizes):
    """Every candidate one vote, for N = each size (no duplicates)."""
    return {k: [1] * k for k in sizes}


def agree_of(masks):
    return PrefixAgreement(iou_rows([encode_rle(m) for m in masks]), ones(*range(len(masks) + 1)))


def test_iou_rows_on_rle_match_naive_empty_masks_included():
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) < p for p in (0.0, 0.1, 0.5, 0.9, 0.3, 0.0)]
    np.testing.assert_allclose(iou_of(masks), naive_iou(masks), atol=1e-12)
    assert iou_of(masks)[0, 5] == 1.0 and iou_of(masks)[0, 1] == 0.0  # two empty masks agree
    assert list(iou_rows([])) == []


def test_iou_rows_for_hundreds_of_candidates():
    """N = 256 and more (pycocotools' area() of a list overflows at 256)."""
    rng = np.random.default_rng(1)
    masks = [rng.random((6, 7)) < (0.4 if k % 37 else 0.0) for k in range(300)]
    flat = np.stack([m.reshape(-1) for m in masks]).astype(np.float64)
    inter = flat @ flat.T
    union = flat.sum(1)[:, None] + flat.sum(1)[None, :] - inter
    expected = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    np.testing.assert_allclose(iou_of(masks), expected, atol=1e-12)


def test_agreement_within_each_prefix_and_pyramid_ranks():
    iou = np.array([[1, 0.5, 0.1], [0.5, 1, 0.3], [0.1, 0.3, 1.0]])
    agree = PrefixAgreement(iter(iou), ones(1, 2, 3))
    np.testing.assert_allclose(agree.agreement(3), [0.3, 0.4, 0.2])
    assert agree.mean_iou(3) == pytest.approx(0.3)
    np.testing.assert_allclose(agree.agreement(2), [0.5, 0.5])  # the first two only
    assert agree.mean_iou(2) == pytest.approx(0.5) and agree.mean_iou(1) == 1.0
    np.testing.assert_allclose(agree.agreement(1), [1.0])
    assert pyramid_order(1) == [] and pyramid_order(2) == [1] and pyramid_order(8) == [1, 2, 4]
    assert pyramid_order(9) == [1, 2, 4, 8]


def test_a_duplicate_keeps_its_vote():
    """Hypotheses 0, 1, 2: 1 repeats 0 (dropped before segmentation), 2 is another object. By
    hand over the three hypotheses' masks (0 and 1 identical, IoU 0.1 with 2): hypothesis 0 agrees
    (1 + 0.1) / 2, hypothesis 2 agrees (0.1 + 0.1) / 2, and the pairs average 0.4."""
    iou = np.array([[1.0, 0.1], [0.1, 1.0]])  # the two kept candidates: hypotheses 0 and 2
    agree = PrefixAgreement(iter(iou), {3: [2, 1], 1: [1]})
    np.testing.assert_allclose(agree.agreement(3), [0.55, 0.1])
    assert agree.mean_iou(3) == pytest.approx((1 + 0.1 + 0.1) * 2 / 6)
    without_votes = PrefixAgreement(iter(iou), {3: [1, 1]})
    np.testing.assert_allclose(without_votes.agreement(3), [0.1, 0.1])  # what dropping the vote gave


def test_prefix_agreement_equals_agreement_on_the_prefix_alone():
    rng = np.random.default_rng(2)
    masks = [rng.random((9, 11)) < p for p in rng.uniform(0, 0.8, 12)]
    full = agree_of(masks)
    for k in range(2, 13):
        sub = naive_iou(masks[:k])
        np.testing.assert_allclose(full.agreement(k), (sub.sum(1) - 1) / (k - 1), atol=1e-12)
        assert full.mean_iou(k) == pytest.approx((sub.sum() - k) / (k * (k - 1)), abs=1e-12)


def make(masks, judge, order="random", seed=0):
    image = Image.new("RGB", (masks[0].shape[1], masks[0].shape[0]))
    return JudgeMemo(judge.rate, judge.duel, image, masks, "q", seed, order)


def test_cut_the_chase_skips_the_judge_when_masks_agree():
    masks = [box_mask(20, 20, 2, 2, 12, 12)] * 3 + [box_mask(20, 20, 2, 2, 12, 13)]
    judge = RuleJudge(masks[0])
    sel = select(4, agree_of(masks), [0.1, 0.2, 0.3, 0.4], make(masks, judge), VerifierSettings())
    assert sel.cut_the_chase and sel.judge_calls == 0 and judge.rate_calls == judge.duel_calls == 0
    assert sel.chosen == 3  # highest SigLIP2 score among agreeing masks


def test_tournament_prefers_the_judges_choice_and_counts_calls():
    ref = box_mask(40, 40, 20, 20, 40, 40)
    masks = [box_mask(40, 40, 0, 0, 10, 10), box_mask(40, 40, 10, 0, 20, 10), box_mask(40, 40, 0, 10, 10, 20),
             box_mask(40, 40, 20, 20, 40, 40)]
    judge = RuleJudge(ref)
    memo = make(masks, judge)
    s = VerifierSettings()
    sel = select(4, agree_of(masks), [0.9, 0.8, 0.7, 0.0], memo, s)
    assert sel.chosen == 3
    # 4 pointwise ratings + duels against ranks 1 and 2 of the hybrid order, one call each
    assert sel.judge_calls == 4 + 2 and judge.rate_calls == 4 and judge.duel_calls == 2
    again = select(4, agree_of(masks), [0.9, 0.8, 0.7, 0.0], memo, s)
    assert again.chosen == 3 and again.judge_calls == 6 and judge.rate_calls == 4  # memo: asked once


def test_unusable_or_position_biased_verdicts_never_make_a_winner():
    ref = box_mask(30, 30, 0, 0, 30, 30)
    masks = [box_mask(30, 30, 0, 0, 5, 5), box_mask(30, 30, 10, 10, 20, 20), box_mask(30, 30, 20, 0, 30, 8)]
    siglip = [0.1, 0.9, 0.2]
    settings = VerifierSettings(weight_vlm=0.0)  # hybrid order fixed by SigLIP2 + agreement
    for answer, order in ((None, "random"), ("A", "both"), ("B", "both")):
        judge = RuleJudge(ref, answer=answer)
        sel = select(3, agree_of(masks), siglip, make(masks, judge, order), settings)
        assert sel.chosen == 1  # the hybrid leader keeps its place: no verdict, no win
        assert judge.duel_calls == (2 if order == "random" else 4)


def test_random_order_shows_the_incumbent_as_a_about_half_the_time():
    masks = [box_mask(8, 8, 0, 0, i + 1, 1) for i in range(8)]
    shown_first = 0
    for seed in range(200):
        judge = RuleJudge(masks[0], answer="A")
        make(masks, judge, seed=seed).duels([(0, 5)])
        shown_first += judge.duels_seen[0][0] is masks[0]
    assert 70 < shown_first < 130


def test_tournament_overturns_the_hybrid_leader_at_rank_four_only():
    ref = box_mask(40, 40, 30, 30, 40, 40)
    masks = [box_mask(40, 40, 6 * i, 0, 6 * i + 5, 5) for i in range(4)] + [ref]
    settings = VerifierSettings(weight_vlm=0.0)
    siglip = [0.9, 0.8, 0.7, 0.6, 0.5]  # hybrid order 0, 1, 2, 3, 4: the judge's favourite is last
    sel = select(5, agree_of(masks), siglip, make(masks, RuleJudge(ref)), settings)
    assert sel.chosen == 4  # met the winner at rank 4 and won
    sel4 = select(4, agree_of(masks[:4]), siglip[:4], make(masks[:4], RuleJudge(ref)), settings)
    assert sel4.chosen != 4


def test_a_judge_that_answers_too_few_ratings_or_duels_is_an_error():
    masks = [box_mask(10, 10, 0, 0, 3 + i, 3) for i in range(3)]

    class ShortJudge(RuleJudge):
        def rate(self, batch):
            return super().rate(batch)[:-1]

        def duel(self, batch):
            return super().duel(batch)[:-1]

    with pytest.raises(RuntimeError, match="2 ratings for 3 masks"):
        make(masks, ShortJudge(masks[0])).rate([0, 1, 2])
    with pytest.raises(RuntimeError, match="0 verdicts for 1 duels"):
        make(masks, ShortJudge(masks[0])).duels([(0, 1)])


def test_a_judge_error_on_one_question_is_that_questions_unusable_answer():
    """A raising duel (or rating) costs that question, counted, and the hybrid decides it;
    the other questions of the same call are still asked."""
    masks = [box_mask(10, 10, 0, 0, 3 + i, 3) for i in range(3)]

    class FlakyJudge(RuleJudge):
        def duel(self, batch):
            if any(item.mask_a is masks[2] or item.mask_b is masks[2] for item in batch):
                raise ConnectionError("judge server restarted")
            return super().duel(batch)

    memo = make(masks, FlakyJudge(masks[0]))
    winners = memo.duels([(0, 1), (0, 2)])
    assert winners[0] == 0 and winners[1] is None  # asked alone after the batch raised
    assert memo.errors == 1 and memo.unusable == 1
    assert "judge error: ConnectionError" in memo.answers[-1]["raw_text"]


def test_noise_below_the_resolution_never_flips_a_choice():
    """Scores that differ by float noise (1e-7) choose as if equal: the earlier hypothesis, in the
    heuristic, in the tournament's seeding and in its fallback, whatever the noise."""
    rng = np.random.default_rng(3)
    same = box_mask(20, 20, 0, 0, 10, 10)
    masks = [same, same.copy(), same.copy(), box_mask(20, 20, 8, 8, 20, 20)]  # three equal candidates
    agree = agree_of(masks)
    base = [0.4, 0.4, 0.4, 0.1]
    for mode, judge_answer in (("heuristic", False), ("comparative", None)):
        choices = set()
        for _ in range(20):
            siglip = [s + rng.uniform(-1e-7, 1e-7) for s in base]
            judge = make(masks, RuleJudge(masks[0], judge_answer)) if mode == "comparative" else None
            choices.add(select(4, agree, siglip, judge, VerifierSettings(mode=mode, siglip_scaling="raw")).chosen)
        assert len(choices) == 1, (mode, choices)
