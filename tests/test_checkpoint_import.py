"""Released reference checkpoints (IRN resnet50_cam, SEAM resnet38_SEAM, AMN resnet50_amn) load into the
project's baselines. Each state dict is written out here from the reference code's module layout (key names
and shapes), not generated from the project's models; the loaded values must be the ones the forward uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wsss_core.baselines.compose import build_model
from wsss_core.errors import ConfigError
from wsss_core.models.reference_checkpoints import load_reference_checkpoint, reference_state_dict
from wsss_core.training.config import ModelConfig

torch.set_num_threads(1)


def bn(prefix: str, channels: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """An nn.BatchNorm2d's entries (IRN's FixedBatchNorm and SEAM's BatchNorm2d are BatchNorm2d)."""
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(channels, generator=gen),
            f"{prefix}.bias": 0.1 * torch.randn(channels, generator=gen),
            f"{prefix}.running_mean": 0.1 * torch.randn(channels, generator=gen),
            f"{prefix}.running_var": 1 + torch.rand(channels, generator=gen),
            f"{prefix}.num_batches_tracked": torch.tensor(0)}


def conv(key: str, *shape: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    fan_in = shape[1] * shape[2] * shape[3]
    return {key: torch.randn(*shape, generator=gen) * (2.0 / fan_in) ** 0.5}


def irn_resnet50(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """IRN's net/resnet50.py ResNet(Bottleneck, [3, 4, 6, 3]) entries, torchvision names (fc removed)."""
    state = {**conv("conv1.weight", 64, 3, 7, 7, gen=gen), **bn("bn1", 64, gen)}
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            state.update(conv(f"{p}.conv1.weight", planes, inplanes, 1, 1, gen=gen))
            state.update(bn(f"{p}.bn1", planes, gen))
            state.update(conv(f"{p}.conv2.weight", planes, planes, 3, 3, gen=gen))
            state.update(bn(f"{p}.bn2", planes, gen))
            state.update(conv(f"{p}.conv3.weight", planes * 4, planes, 1, 1, gen=gen))
            state.update(bn(f"{p}.bn3", planes * 4, gen))
            if block == 0:
                state.update(conv(f"{p}.downsample.0.weight", planes * 4, inplanes, 1, 1, gen=gen))
                state.update(bn(f"{p}.downsample.1", planes * 4, gen))
            inplanes = planes * 4
    return state


def stage_aliases(resnet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """resnet50_cam.Net's state dict lists each shared module under every attribute holding it: resnet50.*,
    stage1 = Sequential(conv1, bn1, relu, maxpool, layer1), stage2..4 = Sequential(layerK), and
    backbone = ModuleList([stage1, …, stage4])."""
    out = {}
    for key, value in resnet.items():
        out[f"resnet50.{key}"] = value
        head, _, rest = key.partition(".")
        stage_part = {"conv1": "stage1.0", "bn1": "stage1.1", "layer1": "stage1.4", "layer2": "stage2.0",
                      "layer3": "stage3.0", "layer4": "stage4.0"}[head]
        out[f"{stage_part}.{rest}"] = value
        stage, index = stage_part.split(".")
        out[f"backbone.{int(stage[-1]) - 1}.{index}.{rest}"] = value
    return out


def irn_cam_state(gen: torch.Generator, classes: int = 20) -> dict[str, torch.Tensor]:
    state = stage_aliases(irn_resnet50(gen))
    classifier = torch.randn(classes, 2048, 1, 1, generator=gen) * 0.05  # Conv2d(2048, 20, 1, bias=False)
    state["classifier.weight"] = state["newly_added.0.weight"] = classifier
    return state


def amn_state(gen: torch.Generator, classes: int = 20) -> dict[str, torch.Tensor]:
    state = stage_aliases(irn_resnet50(gen))
    enc_w, enc_b = torch.randn(2048, classes, generator=gen), torch.randn(2048, generator=gen)  # Linear(20, 2048)
    state["label_enc.weight"] = state["newly_added.1.weight"] = enc_w
    state["label_enc.bias"] = state["newly_added.1.bias"] = enc_b
    for i in range(4):  # classifier = Sequential(Dropout(0.1), _ASPP(2048, 21, [6, 12, 18, 24])): c0 … c3
        w = torch.randn(classes + 1, 2048, 3, 3, generator=gen) * 0.01
        b = torch.randn(classes + 1, generator=gen)
        state[f"classifier.1.c{i}.weight"] = state[f"newly_added.0.1.c{i}.weight"] = w
        state[f"classifier.1.c{i}.bias"] = state[f"newly_added.0.1.c{i}.bias"] = b
    return state


def seam_state(gen: torch.Generator, classes: int = 20) -> dict[str, torch.Tensor]:
    """network/resnet38d.Net + resnet38_SEAM.Net: ResBlock(in, mid, out) and ResBlock_bot(in, out) entries."""
    state = conv("conv1a.weight", 64, 3, 3, 3, gen=gen)

    def block(name, cin, mid, cout, stride=1):
        state.update(bn(f"{name}.bn_branch2a", cin, gen))
        state.update(conv(f"{name}.conv_branch2a.weight", mid, cin, 3, 3, gen=gen))
        state.update(bn(f"{name}.bn_branch2b1", mid, gen))
        state.update(conv(f"{name}.conv_branch2b1.weight", cout, mid, 3, 3, gen=gen))
        if cin != cout or stride != 1:
            state.update(conv(f"{name}.conv_branch1.weight", cout, cin, 1, 1, gen=gen))

    def bottleneck(name, cin, cout):
        state.update(bn(f"{name}.bn_branch2a", cin, gen))
        state.update(conv(f"{name}.conv_branch2a.weight", cout // 4, cin, 1, 1, gen=gen))
        state.update(bn(f"{name}.bn_branch2b1", cout // 4, gen))
        state.update(conv(f"{name}.conv_branch2b1.weight", cout // 2, cout // 4, 3, 3, gen=gen))
        state.update(bn(f"{name}.bn_branch2b2", cout // 2, gen))
        state.update(conv(f"{name}.conv_branch2b2.weight", cout, cout // 2, 1, 1, gen=gen))
        state.update(conv(f"{name}.conv_branch1.weight", cout, cin, 1, 1, gen=gen))

    block("b2", 64, 128, 128, 2), block("b2_1", 128, 128, 128), block("b2_2", 128, 128, 128)
    block("b3", 128, 256, 256, 2), block("b3_1", 256, 256, 256), block("b3_2", 256, 256, 256)
    block("b4", 256, 512, 512, 2)
    for i in range(1, 6):
        block(f"b4_{i}", 512, 512, 512)
    block("b5", 512, 512, 1024), block("b5_1", 1024, 512, 1024), block("b5_2", 1024, 512, 1024)
    bottleneck("b6", 1024, 2048), bottleneck("b7", 2048, 4096)
    state.update(bn("bn7", 4096, gen))
    state["fc8.weight"] = torch.randn(classes + 1, 4096, 1, 1, generator=gen) * 0.02  # 21 rows
    state["f8_3.weight"] = torch.randn(64, 512, 1, 1, generator=gen) * 0.05
    state["f8_4.weight"] = torch.randn(128, 1024, 1, 1, generator=gen) * 0.05
    state["f9.weight"] = torch.randn(192, 192 + 3, 1, 1, generator=gen) * 0.05
    return state


def project_model(baseline: str, backbone: str, classes: int = 20, **options):
    cfg = ModelConfig(baseline=baseline, backbone=backbone, options=options)
    cfg.validate("model")
    return build_model(cfg, [], classes)


@pytest.fixture(scope="module")
def irn_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = irn_cam_state(torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("irn") / "res50_cam.pth"
    torch.save(state, path)
    return path, state


def test_irn_checkpoint_loads_and_its_classifier_makes_the_logits(irn_file):
    path, state = irn_file
    model = project_model("cam", "resnet50")
    load_reference_checkpoint(model.baseline, path, "irn")
    baseline = model.baseline.eval()
    loaded = baseline.state_dict()
    for ours, theirs in (("backbone.conv1.weight", "resnet50.conv1.weight"),
                         ("backbone.layer3.4.bn2.running_var", "stage3.0.4.bn2.running_var"),
                         ("backbone.layer2.0.downsample.0.weight", "backbone.1.0.0.downsample.0.weight"),
                         ("classifier.weight", "classifier.weight")):
        assert torch.equal(loaded[ours], state[theirs]), ours
    image = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        features = baseline.backbone(image)
        logits = baseline.infer_logits(image)
    torch.testing.assert_close(logits, F.conv2d(features, state["classifier.weight"]))
    # and the backbone is the file's: its first conv + BatchNorm (eval, running statistics) by hand
    with torch.no_grad():
        stem = F.batch_norm(F.conv2d(image, state["resnet50.conv1.weight"], stride=2, padding=3),
                            state["resnet50.bn1.running_mean"], state["resnet50.bn1.running_var"],
                            state["resnet50.bn1.weight"], state["resnet50.bn1.bias"], training=False)
        torch.testing.assert_close(baseline.backbone.bn1(baseline.backbone.conv1(image)), stem)


def test_amn_checkpoint_loads_label_encoder_and_aspp():
    state = amn_state(torch.Generator().manual_seed(1))
    model = project_model("amn", "resnet50")
    baseline = model.baseline
    baseline.load_state_dict(reference_state_dict(state, "amn", baseline, "amn.pth"))
    baseline.eval()
    image, label = torch.randn(1, 3, 40, 40), torch.tensor([[1.0] + [0.0] * 18 + [1.0]])
    with torch.no_grad():
        features = baseline.backbone(image) * F.linear(label, state["label_enc.weight"], state["label_enc.bias"])[
            :, :, None, None]
        expected = sum(F.conv2d(features, state[f"classifier.1.c{i}.weight"], state[f"classifier.1.c{i}.bias"],
                                padding=rate, dilation=rate) for i, rate in enumerate((6, 12, 18, 24)))
        torch.testing.assert_close(baseline.logits(image, label), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(baseline.backbone.layer4[2].conv3.weight, state["stage4.0.2.conv3.weight"])


def test_seam_checkpoint_loads_fc8_rows_and_pcm_heads():
    state = seam_state(torch.Generator().manual_seed(2))
    model = project_model("seam", "resnet38d")
    baseline = model.baseline
    baseline.load_state_dict(reference_state_dict(state, "seam", baseline, "seam.pth"))
    baseline.eval()
    for name in ("f8_3", "f8_4", "f9"):
        assert torch.equal(getattr(baseline.pcm, name).weight, state[f"{name}.weight"])
    assert torch.equal(baseline.backbone.b4_5.bn_branch2b1.running_mean, state["b4_5.bn_branch2b1.running_mean"])
    image = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        logits, _ = baseline.branch(image)
        features = baseline.backbone(image)
    # the CAM logits are fc8's foreground rows 1: on the backbone's features (row 0 is SEAM's unused background)
    torch.testing.assert_close(logits, F.conv2d(features, state["fc8.weight"][1:]))
    # a model built without the background row takes rows 1: of fc8
    compact = project_model("seam", "resnet38d", background_row=False).baseline
    compact.load_state_dict(reference_state_dict(state, "seam", compact, "seam.pth"))
    assert torch.equal(compact.classifier.weight, state["fc8.weight"][1:])


def test_unexpected_and_missing_keys_are_one_error_naming_the_file(irn_file, tmp_path):
    _, state = irn_file
    dropped = {"resnet50.layer4.2.bn3.bias", "stage4.0.2.bn3.bias", "backbone.3.0.2.bn3.bias"}  # every copy
    broken = {k: v for k, v in state.items() if k not in dropped}
    broken["fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ConfigError) as err:
        load_reference_checkpoint(project_model("cam", "resnet50").baseline, path, "irn")
    message = str(err.value)
    assert str(path) in message
    assert "unexpected keys 1: fc.weight" in message
    assert "missing keys 1: backbone.layer4.2.bn3.bias" in message


def test_wrong_model_disagreeing_aliases_and_unknown_format():
    state = irn_cam_state(torch.Generator().manual_seed(3))
    with pytest.raises(ConfigError, match="checkpoint format 'irn' loads into model.baseline=cam with "
                                          "model.backbone=resnet50; this model is CamBaseline on SmallNet"):
        reference_state_dict(state, "irn", project_model("cam", "small").baseline, "x.pth")
    state["stage3.0.1.conv2.weight"] = state["stage3.0.1.conv2.weight"] + 1.0  # one copy altered
    with pytest.raises(ConfigError, match=r"x.pth: .*aliases that disagree 1: stage3.0.1.conv2.weight"):
        reference_state_dict(state, "irn", project_model("cam", "resnet50").baseline, "x.pth")
    with pytest.raises(ConfigError, match="valid choices: irn, seam, amn"):
        reference_state_dict(state, "deeplab", project_model("cam", "resnet50").baseline)


def test_wsss_cams_runs_an_imported_irn_checkpoint(irn_file, tmp_path):
    from wsss.cli import main
    from wsss_core.data.synth import generate_synthetic_voc
    from wsss_core.evaluation import CamStore

    path, state = irn_file
    root = generate_synthetic_voc(tmp_path / "voc", seed=4, n_train=2, n_val=1, size=40, num_classes=20,
                                  n_aug_extra=0, show_progress=False)
    run_dir = tmp_path / "irn-released"
    args = ["cams", "--run-dir", str(run_dir), "--checkpoint", str(path), "--checkpoint-format", "irn",
            "--set", f"data.root={root}", "--set", "train.device=cpu", "--set", "cams.scales=[1.0]",
            "--set", "cams.flip=false"]
    assert main(args) == 0
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert saved["imported_from"]["format"] == "irn" and saved["stage_key"].startswith("import-")
    assert torch.equal(saved["model"]["baseline.classifier.weight"], state["classifier.weight"])
    store = CamStore(run_dir / "cams")
    assert len(store) == 2 and (run_dir / "eval").is_dir()
    assert main(args) == 0  # the same file again: the run dir is reused
    other = tmp_path / "other.pth"
    torch.save(irn_cam_state(torch.Generator().manual_seed(9)), other)
    assert main([*args[:4], str(other), *args[5:]]) == 2  # another model into the same run dir: refused
    assert torch.equal(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"][
        "baseline.classifier.weight"], state["classifier.weight"])
