"""What every VLM backend is asked: images scaled to the role's pixel budget, the planner's
grid boxes read on the original image."""
import numpy as np
import pytest
from PIL import Image

from rescue_eval.core.types import PlanItem, RateItem
from rescue_eval.models.vlm_requests import fit_image, plan_rows, rate_request, to_hypothesis

pytestmark = pytest.mark.unit


def test_large_images_are_scaled_to_the_budget_and_small_ones_pass_as_they_are():
    small = Image.new("RGB", (640, 480))
    assert fit_image(small, 1024 * 1024) is small
    big = Image.new("RGB", (4000, 3000))
    fitted = fit_image(big, 1024 * 1024)
    assert fitted.width * fitted.height <= 1024 * 1024 and abs(fitted.width / fitted.height - 4 / 3) < 0.01
    assert fitted.width > 1100  # not shrunk further than the budget asks


def test_a_judge_overlay_is_scaled_and_a_planner_box_means_the_original_pixels():
    big = Image.new("RGB", (2000, 1000))
    mask = np.zeros((1000, 2000), bool)
    mask[100:300, 200:600] = True
    _, [overlay] = rate_request(RateItem(big, mask, "q"), max_pixels=768 * 768)
    assert overlay.width * overlay.height <= 768 * 768 and overlay.size != big.size
    [row] = plan_rows([PlanItem(big, "q", n=1, seed=0)], ["direct"], [0.3])
    hypothesis = to_hypothesis(row, big, '{"bbox_2d":[100,100,300,300]}')
    assert hypothesis.box == (200.0, 100.0, 600.0, 300.0)  # on the 2000 x 1000 original
