"""Losses against values computed by hand (2 classes, a few pixels; probabilities chosen as 1/4, 3/4, 1/2)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bismap.io import InputError
from bismap.method.losses import (
    consistency_kl,
    distillation_loss,
    sigmoid_rampup,
    symmetric_cross_entropy,
    weighted_cross_entropy,
)

LN3 = math.log(3.0)


def _logits() -> torch.Tensor:
    # [1, 2 classes, 1, 3]: pixel 0 -> p = (1/4, 3/4); pixel 1 -> (1/2, 1/2); pixel 2 -> (1/2, 1/2)
    return torch.tensor([[[[0.0, 0.0, 0.0]], [[LN3, 0.0, 0.0]]]], requires_grad=True)


def test_weighted_ce_normalised_by_valid_count() -> None:
    target = torch.tensor([[[1, 0, 255]]])
    weight = torch.tensor([[[0.5, 1.0, 7.0]]])
    got = weighted_cross_entropy(_logits(), target, weight)
    expected = (0.5 * math.log(4 / 3) + 1.0 * math.log(2)) / 2  # 2 valid pixels, not the weight sum 1.5
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert weighted_cross_entropy(_logits(), target).item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2,
                                                                              rel=1e-6)


def test_losses_upsample_logits_to_label_size() -> None:
    logits = torch.tensor([[[[0.0]], [[LN3]]]])  # 1x1 -> constant after align_corners upsampling
    target = torch.tensor([[[1, 1], [0, 255]]])
    got = weighted_cross_entropy(logits, target)
    assert got.item() == pytest.approx((2 * math.log(4 / 3) + math.log(4)) / 3, rel=1e-6)


def test_no_valid_pixels_gives_zero_with_graph() -> None:
    logits = _logits()
    target = torch.full((1, 1, 3), 255)
    for loss in (weighted_cross_entropy(logits, target), symmetric_cross_entropy(logits, target),
                 consistency_kl(logits, logits.detach(), torch.zeros(1, 1, 3, dtype=torch.bool))):
        assert loss.item() == 0.0
        loss.backward()


def test_symmetric_cross_entropy_hand_value() -> None:
    target = torch.tensor([[[1, 0, 255]]])
    got = symmetric_cross_entropy(_logits(), target, alpha=0.1, beta=1.0)
    ce = (math.log(4 / 3) + math.log(2)) / 2
    rce = -math.log(1e-4) * ((1 - 3 / 4) + (1 - 1 / 2)) / 2  # -sum_c p_c log(clip(onehot)) = -ln(1e-4)(1 - p_y)
    assert got.item() == pytest.approx(0.1 * ce + 1.0 * rce, rel=1e-6)
    assert symmetric_cross_entropy(_logits(), target, alpha=0.0, beta=2.0).item() == pytest.approx(2 * rce, rel=1e-6)


def test_consistency_kl_masked_mean_and_teacher_detached() -> None:
    student = torch.tensor([[[[0.0, 5.0]], [[0.0, -5.0]]]], requires_grad=True)  # pixel 0: (1/2, 1/2)
    teacher = torch.tensor([[[[0.0, 0.0]], [[LN3, 0.0]]]], requires_grad=True)   # pixel 0: (1/4, 3/4)
    keep = torch.tensor([[[True, False]]])
    got = consistency_kl(student, teacher, keep)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert got.item() == pytest.approx(kl / (1 * 2), rel=1e-6)  # 1 kept pixel x 2 classes
    got.backward()
    assert teacher.grad is None and student.grad is not None
    assert torch.all(student.grad[..., 1] == 0)  # the cut-out pixel gets no gradient


def test_sigmoid_rampup() -> None:
    assert sigmoid_rampup(0, 4000) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(2000, 4000) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(4000, 4000) == 1.0 and sigmoid_rampup(9000, 4000) == 1.0
    assert sigmoid_rampup(10, 0) == 1.0


def test_distillation_variants_hand_values() -> None:
    student = torch.tensor([[[[0.0]], [[0.0]]]], requires_grad=True)  # s = (1/2, 1/2)
    teacher = torch.tensor([[[[0.0]], [[LN3]]]])                     # t = (1/4, 3/4)
    n = 1 * 2 * 1 * 1
    kl = distillation_loss(student, teacher, "kl")
    assert kl.item() == pytest.approx((0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / n, rel=1e-6)
    orig = distillation_loss(student, teacher, "original")
    assert orig.item() == pytest.approx((0.25 * (math.log(0.25) - 0.5) + 0.75 * (math.log(0.75) - 0.5)) / n, rel=1e-6)
    # exactly the original's call: kl_div with probabilities as input, summed, / numel
    s, t = F.softmax(student, 1), F.softmax(teacher, 1)
    assert orig.item() == pytest.approx((F.kl_div(s, t, reduction="none")).sum().item() / n, rel=1e-6)
    with pytest.raises(InputError):
        distillation_loss(student, teacher, "bogus")


def test_distillation_upsamples_teacher_and_detaches() -> None:
    student = torch.zeros(1, 2, 4, 4, requires_grad=True)
    teacher = torch.zeros(1, 2, 2, 2, requires_grad=True)
    loss = distillation_loss(student, teacher, "kl")
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert teacher.grad is None
