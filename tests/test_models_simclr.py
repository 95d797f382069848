"""SimCLRv2 nets: the public conversions' key layouts (built here from pretrained-weights.md,
not from our module) load strictly; segmentation-backbone shapes; mismatches are InputErrors."""
from __future__ import annotations

import pytest
import torch
import torchvision

from bismap.io import InputError
from bismap.models import build_model, load_pretrained
from bismap.models.simclr import SimCLRBackbone, SimCLRResNet
from conftest import schema_defaults

torch.set_num_threads(1)

SMALL = {"aspp_channels": 32, "decoder_channels": 24, "low_level_channels": 8}


def model_cfg(model: dict) -> dict:
    """A complete `model` slice: the schema's defaults with `model` over them (typos kept, to test them)."""
    return {**schema_defaults("model"), **model}


def _bn(d: dict, prefix: str, c: int) -> None:
    for k in ("weight", "bias", "running_mean", "running_var"):
        d[f"{prefix}.{k}"] = (c,)
    d[f"{prefix}.num_batches_tracked"] = ()


def converter_layout(layers: tuple[int, ...], sk: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the SimCLRv2-Pytorch converter's `resnet` dict, written from the spec document."""
    d: dict[str, tuple[int, ...]] = {}
    if sk:
        d["net.0.0.weight"] = (32, 3, 3, 3)
        _bn(d, "net.0.1.0", 32)
        d["net.0.2.weight"] = (32, 32, 3, 3)
        _bn(d, "net.0.3.0", 32)
        d["net.0.4.weight"] = (64, 32, 3, 3)
        _bn(d, "net.0.5.0", 64)
    else:
        d["net.0.0.weight"] = (64, 3, 7, 7)
        _bn(d, "net.0.1.0", 64)
    cin = 64
    for n_stage, (n, c) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for i in range(n):
            p = f"net.{n_stage}.blocks.{i}"
            inc = cin if i == 0 else 4 * c
            if i == 0:
                d[f"{p}.projection.shortcut.2.weight" if sk else f"{p}.projection.shortcut.weight"] = (4 * c, inc, 1, 1)
                _bn(d, f"{p}.projection.bn.0", 4 * c)
            d[f"{p}.net.0.weight"] = (c, inc, 1, 1)
            _bn(d, f"{p}.net.1.0", c)
            if sk:
                d[f"{p}.net.2.main_conv.0.weight"] = (2 * c, c, 3, 3)
                _bn(d, f"{p}.net.2.main_conv.1.0", 2 * c)
                d[f"{p}.net.2.mixing_conv.0.weight"] = (32, c, 1, 1)
                _bn(d, f"{p}.net.2.mixing_conv.1.0", 32)
                d[f"{p}.net.2.mixing_conv.2.weight"] = (2 * c, 32, 1, 1)
                d[f"{p}.net.3.weight"] = (4 * c, c, 1, 1)
                _bn(d, f"{p}.net.4.0", 4 * c)
            else:
                d[f"{p}.net.2.weight"] = (c, c, 3, 3)
                _bn(d, f"{p}.net.3.0", c)
                d[f"{p}.net.4.weight"] = (4 * c, c, 1, 1)
                _bn(d, f"{p}.net.5.0", 4 * c)
        cin = 4 * c
    d["fc.weight"] = (1000, 2048)
    d["fc.bias"] = (1000,)
    return d


def _tagged_state(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensor i is filled with the value i (a stride-0 view: the saved file stays tiny), so a test can
    check that every key landed in the right place."""
    out = {}
    for i, (k, shape) in enumerate(layout.items()):
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(i)
        else:
            out[k] = torch.full((1,), float(i)).expand(shape) if shape else torch.tensor(float(i))
    return out


def _check_tagged(loaded: dict[str, torch.Tensor], state: dict[str, torch.Tensor], rename=lambda k: k) -> None:
    for k, v in state.items():
        target = loaded[rename(k)]
        assert target.shape == v.shape, k
        assert torch.all(target == v.flatten()[0] if v.dim() else target == v), k


def _learnable(layout: dict[str, tuple[int, ...]]) -> int:
    n = 0
    for k, shape in layout.items():
        if k.endswith(("weight", "bias")):
            n += int(torch.Size(shape).numel())
    return n


def test_r152_sk1_layout_counts_and_strict_load(tmp_path) -> None:
    layout = converter_layout((3, 8, 36, 3), sk=True)
    assert len(layout) == 1294 and _learnable(layout) == 90_989_896  # numbers from pretrained-weights.md
    state = _tagged_state(layout)
    torch.save({"resnet": state, "head": {"layers.0.weight": torch.zeros(3)}}, tmp_path / "r152_1x_sk1.pth")
    net = SimCLRResNet(152, width_multiplier=1, sk_ratio=0.0625)
    assert set(net.state_dict()) == set(layout)
    assert sum(p.numel() for p in net.parameters()) == 90_989_896
    load_pretrained(net, tmp_path / "r152_1x_sk1.pth", key="resnet")
    _check_tagged(net.state_dict(), state)
    for m in net.modules():  # tagged running_var values are >= 0 but keep the forward finite
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_parameters()
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 2048, 2, 2)  # stride 32


def test_r101_sk0_torchvision_layout_loads_everywhere(tmp_path) -> None:
    tv = torchvision.models.resnet101().state_dict()
    assert len(tv) == 626
    state = {"module." + k: v for k, v in _tagged_state({k: tuple(v.shape) for k, v in tv.items()}).items()}
    path = tmp_path / "r101_1x_sk0.pth"
    torch.save({"state_dict": state}, path)
    # torchvision backbone: strip module., drop fc -> 624 tensors
    model = build_model(model_cfg({"backbone": "resnet101", "weights": str(path), **SMALL}))
    assert len(model.backbone.state_dict()) == 624
    _check_tagged(model.backbone.state_dict(), {k[7:]: v for k, v in state.items() if not k.startswith("module.fc.")})
    # SimCLR sk0 backbone: torchvision names mapped onto the converter's names
    sm = build_model(model_cfg({"backbone": "simclr_r101", "sk_ratio": 0.0, "weights": str(path), **SMALL}))
    from bismap.models.simclr import torchvision_to_simclr_sk0

    _check_tagged(sm.backbone.state_dict(), {k[7:]: v for k, v in state.items() if not k.startswith("module.fc.")},
                  rename=torchvision_to_simclr_sk0)
    # and a plain SimCLRResNet with fc loads all 626
    full = SimCLRResNet(101, sk_ratio=0.0)
    load_pretrained(full, path, key="state_dict")
    assert torch.all(full.fc.weight == state["module.fc.weight"][0, 0])


def test_converter_sk0_layout_loads_into_torchvision_backbone(tmp_path) -> None:
    layout = converter_layout((3, 4, 23, 3), sk=False)
    assert len(layout) == 626
    state = _tagged_state(layout)
    torch.save({"resnet": state}, tmp_path / "sk0.pth")
    model = build_model(model_cfg({"backbone": "resnet101", "weights": str(tmp_path / "sk0.pth"), **SMALL}))
    from bismap.models.simclr import simclr_sk0_to_torchvision

    _check_tagged(model.backbone.state_dict(), {k: v for k, v in state.items() if not k.startswith("fc.")},
                  rename=simclr_sk0_to_torchvision)
    assert torch.all(model.backbone.layer2[1].bn3.weight == state["net.2.blocks.1.net.5.0.weight"][0])


def test_mismatch_lists_missing_and_unexpected(tmp_path) -> None:
    layout = converter_layout((3, 4, 6, 3), sk=True)  # r50 sk1: same naming, cheaper
    state = _tagged_state(layout)
    del state["net.2.blocks.3.net.0.weight"]
    state["net.9.bogus.weight"] = torch.zeros(1)
    torch.save({"resnet": state}, tmp_path / "bad.pth")
    with pytest.raises(InputError) as err:
        load_pretrained(SimCLRResNet(50), tmp_path / "bad.pth", key="resnet")
    msg = str(err.value)
    assert "bad.pth" in msg and "1 missing keys (net.2.blocks.3.net.0.weight)" in msg
    assert "1 unexpected keys (net.9.bogus.weight)" in msg and "\n" not in msg
    # sk1 file into an sk0 net: many missing/unexpected, counts reported, list truncated
    torch.save({"resnet": _tagged_state(layout)}, tmp_path / "sk1.pth")
    load_pretrained(SimCLRResNet(50), tmp_path / "sk1.pth")  # nested key found automatically
    with pytest.raises(InputError, match=r"missing keys .*\(\+\d+\)"):
        load_pretrained(SimCLRResNet(50, sk_ratio=0.0), tmp_path / "sk1.pth")
    with pytest.raises(InputError, match="no key 'nope'"):
        load_pretrained(SimCLRResNet(50), tmp_path / "sk1.pth", key="nope")
    (tmp_path / "junk.pth").write_text("not a torch file")
    with pytest.raises(InputError, match="cannot read"):
        load_pretrained(SimCLRResNet(50), tmp_path / "junk.pth")


@pytest.mark.parametrize("depth,sk", [(50, 0.0), (50, 0.0625), (101, 0.0), (101, 0.0625)])
def test_simclr_segmentation_backbones(depth: int, sk: float) -> None:
    model = build_model(model_cfg({"backbone": f"simclr_r{depth}", "sk_ratio": sk, **SMALL})).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        low, high = model.backbone(x)
        feature, logits = model(x)
    assert low.shape == (1, 256, 16, 16) and high.shape == (1, 2048, 4, 4)
    assert feature.shape == (1, 24, 16, 16) and logits.shape == (1, 19, 16, 16)
    backbone, head = model.param_groups()
    assert len({id(p) for p in backbone + head}) == len(backbone) + len(head) == len(list(model.parameters()))
    assert model.backbone.fc is None


def test_simclr_backbone_dilation() -> None:
    bb = SimCLRBackbone(50, sk_ratio=0.0625, output_stride=16, multi_grid=(1, 2, 4))
    assert [b.net[2].main_conv[0].dilation[0] for b in bb.net[4].blocks] == [2, 4, 8]
    assert bb.net[4].blocks[0].projection.shortcut[1].stride == 1
    with pytest.raises(InputError, match="multi_grid"):
        SimCLRBackbone(50, multi_grid=(1, 2))
