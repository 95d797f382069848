"""DeepLabV3+ shapes/strides per backbone, parameter groups, init, frozen BN, ImageNet loading path."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bismap.io import InputError
from bismap.models import build_model, freeze_batchnorm, load_pretrained
from bismap.models.frozen_bn import FrozenBatchNorm2d
from conftest import schema_defaults

torch.set_num_threads(1)

SMALL = {"aspp_channels": 32, "decoder_channels": 24, "low_level_channels": 8}


def model_cfg(model: dict) -> dict:
    """A complete `model` slice: the schema's defaults with `model` over them (typos kept, to test them)."""
    return {**schema_defaults("model"), **model}


def _check_groups(model: nn.Module) -> None:
    backbone, head = model.param_groups()
    ids = [id(p) for p in backbone + head]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "param groups do not cover all parameters"
    assert {id(p) for p in backbone} == {id(p) for p in model.backbone.parameters()}


@pytest.mark.parametrize("name,low_c,high_c", [("resnet18", 64, 512), ("resnet34", 64, 512),
                                                ("resnet50", 256, 2048), ("resnet101", 256, 2048)])
def test_resnet_deeplab_shapes(name: str, low_c: int, high_c: int) -> None:
    torch.manual_seed(0)
    model = build_model(model_cfg({"backbone": name, **SMALL})).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        low, high = model.backbone(x)
        feature, logits = model(x)
    assert low.shape == (1, low_c, 16, 16)
    assert high.shape == (1, high_c, 4, 4)  # output stride 16
    assert feature.shape == (1, 24, 16, 16) and logits.shape == (1, 19, 16, 16)
    assert model.feature_dim == 24
    _check_groups(model)


def test_multigrid_dilations_and_os8() -> None:
    model = build_model(model_cfg({"backbone": "resnet50", "output_stride": 16, "multi_grid": [1, 2, 4], **SMALL}))
    assert [b.conv2.dilation[0] for b in model.backbone.layer4] == [2, 4, 8]
    assert model.backbone.layer4[0].conv2.stride == (1, 1)
    assert model.backbone.layer4[0].downsample[0].stride == (1, 1)
    assert [m[0].dilation[0] for m in model.aspp.branches[1:]] == [6, 12, 18]
    m8 = build_model(model_cfg({"backbone": "resnet18", "output_stride": 8, **SMALL})).eval()
    assert [b.conv1.dilation[0] for b in m8.backbone.layer3] == [2, 2]
    assert [m[0].dilation[0] for m in m8.aspp.branches[1:]] == [12, 24, 36]
    with torch.no_grad():
        low, high = m8.backbone(torch.randn(1, 3, 64, 64))
    assert high.shape == (1, 512, 8, 8) and low.shape[-1] == 16


def test_train_mode_backward_and_odd_size() -> None:
    model = build_model(model_cfg({"backbone": "resnet18", **SMALL})).train()
    feature, logits = model(torch.randn(2, 3, 50, 70))
    assert logits.shape == (2, 19, 13, 18)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_init_kaiming_and_bn() -> None:
    model = build_model(model_cfg({"backbone": "resnet18", **SMALL}))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    w = model.decoder.fuse[0][0].weight  # fan_in = 3*3*(8+32); kaiming std = sqrt(2/fan_in)
    assert abs(w.std().item() - (2 / (9 * 40)) ** 0.5) < 0.01
    assert model.decoder.classifier.bias is not None


def test_unknown_keys_and_backbone() -> None:
    with pytest.raises(InputError, match="unknown key"):
        build_model(model_cfg({"backbone": "resnet18", "aspp_chanels": 3}))
    with pytest.raises(InputError, match="unknown backbone"):
        build_model(model_cfg({"backbone": "vgg16"}))
    with pytest.raises(InputError, match="imagenet"):
        build_model(model_cfg({"backbone": "simclr_r50", "weights": "imagenet"}))


def test_freeze_batchnorm_same_output() -> None:
    torch.manual_seed(0)
    model = build_model(model_cfg({"backbone": "resnet18", **SMALL}))
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[1]
        freeze_batchnorm(model.backbone)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
        model.backbone.train()  # frozen stats even in train mode
        out = model(x)[1]
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
    assert isinstance(freeze_batchnorm(nn.BatchNorm2d(3)), FrozenBatchNorm2d)


def test_imagenet_weights_via_torchvision_api(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision
    import torchvision.models._api as api

    calls = []

    def fake(url: str, *a, **k):  # what torchvision's weights API downloads, without a network
        calls.append(url)
        sd = torchvision.models.resnet18().state_dict()
        sd["conv1.weight"] = torch.full_like(sd["conv1.weight"], 0.5)
        return sd

    monkeypatch.setattr(api, "load_state_dict_from_url", fake)
    model = build_model(model_cfg({"backbone": "resnet18", "weights": "imagenet", **SMALL}))
    assert calls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert torch.all(model.backbone.conv1.weight == 0.5)

    def offline(url: str, *a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(InputError, match="could not fetch ImageNet weights"):
        build_model(model_cfg({"backbone": "resnet18", "weights": "imagenet", **SMALL}))


def test_load_whole_checkpoint_backbone_only(tmp_path) -> None:
    src = build_model(model_cfg({"backbone": "resnet18", **SMALL}))
    torch.save({"format": "bismap-checkpoint/1", "model": src.state_dict()}, tmp_path / "ck.pt")
    dst = build_model(model_cfg({"backbone": "resnet18", "weights": str(tmp_path / "ck.pt"), **SMALL}))
    torch.testing.assert_close(dst.backbone.conv1.weight, src.backbone.conv1.weight)
    assert not torch.equal(dst.decoder.classifier.weight, src.decoder.classifier.weight)  # fresh head
    with pytest.raises(InputError, match="not found"):
        load_pretrained(dst, tmp_path / "missing.pth")
