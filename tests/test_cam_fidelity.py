"""The CAM baseline trains what IRN's resnet50_cam.Net trains: layer3, layer4 and the classifier (the features
are detached after layer2; conv1/bn1 frozen), BatchNorm with fixed running statistics but trainable weight
and bias. Checked on a real optimiser step; the earlier behaviour is one setting away; the small CNN (trained
from scratch) detaches nothing by default."""

from __future__ import annotations

import pytest
import torch

from wsss_core.baselines.compose import build_model
from wsss_core.errors import ConfigError
from wsss_core.training.config import ModelConfig

torch.set_num_threads(1)


def cam_model(backbone="resnet50", backbone_options=None, **options):
    cfg = ModelConfig(baseline="cam", backbone=backbone, backbone_options=backbone_options or {}, options=options)
    cfg.validate("model")
    torch.manual_seed(0)
    return build_model(cfg, [], 3)


def sgd_step(model):
    """One training step as the trainer takes it: the baseline's parameter groups, SGD with weight decay."""
    groups = [{"params": g.params, "lr": 0.1 * g.lr_mult} for g in model.baseline.param_groups() if g.params]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    torch.manual_seed(1)
    image, label = torch.randn(2, 3, 64, 64) * 3 + 1, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    total, _, _ = model(image, label)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, after, prefix):
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def test_irn_cam_trains_layer3_onward_with_frozen_statistics_and_trainable_bn_affine():
    model = cam_model()
    backbone = model.baseline.backbone
    before = snapshot(backbone)
    sgd_step(model)
    after = snapshot(backbone)
    # conv1 … layer2: no gradient at all (IRN's stage2(x).detach()), so nothing there moves
    for name in ("conv1", "bn1", "layer1", "layer2"):
        module = getattr(backbone, name)
        assert all(p.grad is None for p in module.parameters()), name
        assert not changed(before, after, name + "."), name
    # layer3 learns: its convs and its BatchNorm weights and biases
    assert backbone.layer3[0].conv2.weight.grad.abs().sum() > 0
    assert backbone.layer3[0].bn2.weight.grad.abs().sum() > 0 and backbone.layer3[0].bn2.bias.grad.abs().sum() > 0
    assert {"layer3.0.conv2.weight", "layer3.0.bn2.weight", "layer3.0.bn2.bias", "layer4.2.bn3.weight"} <= \
        changed(before, after, "layer")
    # every BatchNorm's running statistics stay the (pretrained) ones
    statistics = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics and not [k for k in statistics if not torch.equal(before[k], after[k])]
    # BN weight and bias sit in the backbone group (lr 1x), the classifier in the head group
    groups = {g.name: {id(p) for p in g.params} for g in model.baseline.param_groups()}
    assert id(backbone.layer3[0].bn2.weight) in groups["backbone"]
    assert id(backbone.layer1[0].conv1.weight) not in groups["backbone"]
    assert groups["head"] == {id(model.baseline.classifier.weight)}


def test_earlier_behaviour_is_one_setting_away():
    model = cam_model(backbone_options={"bn": "frozen"}, detached_stages=0)
    backbone = model.baseline.backbone
    before = snapshot(backbone)
    sgd_step(model)
    after = snapshot(backbone)
    assert backbone.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert "layer1.0.conv1.weight" in changed(before, after, "layer1.")
    bn_params = [k for k in before if ".bn" in k and k.endswith(("weight", "bias"))]
    assert bn_params and not [k for k in bn_params if not torch.equal(before[k], after[k])]


def test_small_cnn_trained_from_scratch_detaches_nothing_by_default():
    model = cam_model(backbone="small", backbone_options={"widths": [8, 16, 16]})
    assert model.baseline.detached_stages == 0
    sgd_step(model)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.baseline.backbone.stages[0].parameters())
    # asked for, the small CNN detaches too
    detached = cam_model(backbone="small", backbone_options={"widths": [8, 16, 16]}, detached_stages=1)
    sgd_step(detached)
    assert all(p.grad is None for p in detached.baseline.backbone.stages[0].parameters())
    assert detached.baseline.backbone.stages[1][0][0].weight.grad.abs().sum() > 0


def test_detached_stages_out_of_range_names_the_option():
    with pytest.raises(ConfigError, match="model.options.detached_stages: .*0 to 3"):
        cam_model(backbone="small", backbone_options={"widths": [8, 16, 16]}, detached_stages=4)
    with pytest.raises(ConfigError, match="detached_stages: must be >= 0"):
        cam_model(detached_stages=-1)
