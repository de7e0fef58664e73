"""The sam3 backend's ROCm CPU fallback of torchvision's roi_align and nms."""
from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from rescue_eval.models import sam3_package
from rescue_eval.models.sam3_package import patch_torchvision_for_rocm

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_torchvision_ops(monkeypatch):
    for name in sam3_package.CPU_FALLBACK_OPS:
        monkeypatch.setattr(torch.ops.torchvision, name, getattr(torch.ops.torchvision, name))


def roi_inputs():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(2, 3, 16, 16, generator=generator)
    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 12.0], [1, 0.5, 2.0, 15.0, 15.0]])
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 9, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    return features, rois, boxes, scores


def run_ops():
    features, rois, boxes, scores = roi_inputs()
    return [torchvision.ops.roi_align(features, rois, output_size=(4, 4), spatial_scale=0.5, sampling_ratio=2,
                                      aligned=True),
            torchvision.ops.RoIAlign((3, 3), 1.0, -1)(features, rois),
            torchvision.ops.nms(boxes, scores, 0.5),
            torchvision.ops.batched_nms(boxes, scores, torch.tensor([0, 0, 1, 1]), 0.5)]


def test_no_patch_off_rocm(restore_torchvision_ops):
    assert torch.version.hip is None
    before = torch.ops.torchvision.nms
    assert patch_torchvision_for_rocm() is False
    assert torch.ops.torchvision.nms is before


def test_rocm_fallback_gives_the_same_results_and_logs(restore_torchvision_ops, monkeypatch, caplog):
    expected = run_ops()
    monkeypatch.setattr(torch.version, "hip", "6.2.0")
    assert patch_torchvision_for_rocm() is True
    patched = torch.ops.torchvision.nms
    assert patch_torchvision_for_rocm() is True and torch.ops.torchvision.nms is patched  # wrapped once
    with caplog.at_level(logging.DEBUG, logger=sam3_package.log.name):
        first, second = run_ops(), run_ops()
    for got in (first, second):
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(warnings) == ["torchvision nms runs on the CPU (ROCm fallback): correct, but slower",
                                "torchvision roi_align runs on the CPU (ROCm fallback): correct, but slower"]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 8  # one per call, 4 calls twice


def test_rocm_fallback_lets_errors_through(restore_torchvision_ops, monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2.0")
    patch_torchvision_for_rocm()
    boxes = torch.tensor([[0, 0, 10, 10.0]])
    with pytest.raises(RuntimeError):
        torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # one box, two scores
    with pytest.raises(RuntimeError, match="same type"):
        torchvision.ops.roi_align(torch.rand(1, 1, 4, 4), torch.rand(1, 5).double(), output_size=2)

    class KernelFailure(Exception):
        pass

    def failing_op(*args):
        raise KernelFailure("bad input")

    with pytest.raises(KernelFailure, match="bad input"):  # the same exception, not a zero tensor
        sam3_package.on_cpu("failing_op", failing_op)(torch.zeros(2))
