"""Backbones: checkpoint names, output strides, frozen BatchNorm/stem, local weight loading errors."""

from __future__ import annotations

import pytest
import torch

from wsss_core.errors import ConfigError
from wsss_core.models import BACKBONES, build_backbone, load_weights

torch.set_num_threads(1)


def torchvision_resnet50_keys() -> list[str]:
    """The ImageNet checkpoint's key names, spelled out from torchvision's layout (minus fc)."""
    def bn(prefix):
        return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]

    keys = ["conv1.weight", *bn("bn1")]
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            for i in (1, 2, 3):
                keys += [f"{p}.conv{i}.weight", *bn(f"{p}.bn{i}")]
            if block == 0:
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
    return keys


def test_resnet50_state_dict_names_match_the_imagenet_checkpoint():
    model = build_backbone("resnet50")
    assert sorted(model.state_dict()) == sorted(torchvision_resnet50_keys())


def test_resnet50_output_stride_16_and_32():
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert build_backbone("resnet50")(x).shape == (1, 2048, 4, 4)
        assert build_backbone("resnet50", options={"strides": [2, 2, 2, 2]})(x).shape == (1, 2048, 2, 2)


def batchnorms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_resnet50_default_bn_keeps_running_stats_and_trains_weight_and_bias_as_irn():
    model = build_backbone("resnet50").train()
    assert all(not m.training for m in batchnorms(model))  # IRN's FixedBatchNorm: running statistics
    # weight and bias are trainable parameters everywhere but in the frozen stem (IRN's train() override)
    assert all(p.requires_grad for m in batchnorms(model) if m is not model.bn1 for p in m.parameters())
    assert not any(p.requires_grad for p in [*model.conv1.parameters(), *model.bn1.parameters()])
    assert model.layer1[0].conv1.weight.requires_grad
    before = model.layer2[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert torch.equal(before, model.layer2[0].bn1.running_mean)


def test_bn_frozen_is_the_earlier_behaviour_and_train_updates_statistics():
    frozen = build_backbone("resnet50", options={"bn": "frozen"}).train()
    assert all(not m.training for m in batchnorms(frozen))
    assert not any(p.requires_grad for m in batchnorms(frozen) for p in m.parameters())
    trained = build_backbone("resnet50", options={"bn": "train"}).train()
    assert all(m.training for m in batchnorms(trained))
    before = trained.layer2[0].bn1.running_mean.clone()
    trained(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert not torch.equal(before, trained.layer2[0].bn1.running_mean)
    with pytest.raises(ConfigError, match="valid choices: frozen_stats, frozen, train"):
        build_backbone("resnet50", options={"bn": "fixed"})


def test_backbone_options_spell_out_every_default():
    from wsss_core.training.config import ModelConfig, stage_key, load_run_config

    cfg = ModelConfig(backbone="resnet50")
    cfg.validate("model")
    assert cfg.backbone_options == {"strides": [2, 2, 2, 1], "bn": "frozen_stats", "freeze_stem": True}
    implicit = load_run_config(None, ["model.backbone=resnet50"])
    explicit = load_run_config(None, ["model.backbone=resnet50", "model.backbone_options={bn: frozen_stats}"])
    changed = load_run_config(None, ["model.backbone=resnet50", "model.backbone_options={bn: frozen}"])
    assert stage_key(implicit) == stage_key(explicit) != stage_key(changed)
    with pytest.raises(ConfigError, match=r"model.backbone_options: unknown option\(s\) depth .*valid options: "
                                          "strides, bn, freeze_stem"):
        ModelConfig(backbone="resnet50", backbone_options={"depth": 3}).validate("model")


def test_resnet38d_reference_key_names_and_stride_8():
    model = build_backbone("resnet38d")
    keys = set(model.state_dict())
    for name in ("conv1a.weight", "b2.bn_branch2a.weight", "b2.conv_branch2a.weight", "b2.conv_branch1.weight",
                 "b2_1.conv_branch2b1.weight", "b4_5.bn_branch2b1.running_var", "b5.conv_branch1.weight",
                 "b6.conv_branch2b2.weight", "b7.bn_branch2b2.weight", "bn7.running_mean"):
        assert name in keys, name
    assert "b2_1.conv_branch1.weight" not in keys  # same-shape blocks have no projection
    assert not model.conv1a.weight.requires_grad
    model.train()  # SEAM's resnet38d.train(): every BatchNorm in eval mode, no gradient to weight and bias
    assert all(not m.training for m in batchnorms(model))
    assert not any(p.requires_grad for m in batchnorms(model) for p in m.parameters())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4096, 4, 4)


def test_small_backbone_is_fast_and_has_the_declared_stride():
    model = build_backbone("small", options={"output_stride": 8})
    assert model(torch.randn(2, 3, 64, 48)).shape == (2, model.out_channels, 8, 6)


def test_load_weights_roundtrip_ignores_fc_and_module_prefix(tmp_path):
    source = build_backbone("small")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 64)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state}, path)
    target = build_backbone("small", pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key])


def test_load_weights_errors_name_the_file_and_the_keys(tmp_path):
    with pytest.raises(ConfigError, match="never downloaded") as missing:
        build_backbone("small", pretrained=str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(missing.value)
    wrong = tmp_path / "r50.pth"
    torch.save(build_backbone("small").state_dict(), wrong)
    with pytest.raises(ConfigError) as err:
        load_weights(build_backbone("resnet50"), wrong)
    message = str(err.value)
    assert "r50.pth" in message and "missing keys 265:" in message and "unexpected keys 18:" in message
    assert "bn1.bias" in message and "stages.0.0.0.weight" in message and "(+" in message


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError, match="valid choices: resnet38d, resnet50, small"):
        build_backbone("vgg16")
    assert {"resnet50", "resnet38d", "small"} <= set(BACKBONES.names())
    with pytest.raises(ConfigError, match="backbone_options"):
        build_backbone("small", options={"depth": 3})
