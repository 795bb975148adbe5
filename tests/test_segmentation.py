"""The final segmentation stage: pseudo-labels (threshold rule, sharing, the evaluator's labels, the CRF form),
the DeepLab networks, the segmentation trainer (learns; exact resume after SIGKILL) and the val evaluation
(equal to the evaluation engine on the same predictions; multi-scale + flip by formula)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.errors import ConfigError
from wsss_core.evaluation import RefineConfig, crf_confident_labels, evaluate_label_dir
from wsss_core.models.deeplab import DilatedResNet, SegmentationNet, build_segmentation_net
from wsss_core.pipeline import plan_trial, run_trial
from wsss_core.pipeline.stages.seg_eval import VAL_DIR
from wsss_core.training.checkpoint import checkpoint_path, load_checkpoint, load_model_weights
from wsss_core.training.config import load_run_config
from wsss_core.training.segmentation import (evaluate_segmentation, predict_probabilities, pseudo_label,
                                             resolve_threshold, train_segmentation)
from wsss_core.training.trainer import KILL_AFTER_STEP_ENV

REPO = Path(__file__).resolve().parents[1]
SYNTH = {"seed": 0, "n_train": 12, "n_aug_extra": 4, "n_val": 6, "size": 40, "num_classes": 3}
TINY = ["model.backbone_options={widths: [8, 16]}", "train.epochs=1", "train.max_steps=3", "train.batch_size=4",
        "data.crop=32", "cams.scales=[1.0]", "cams.flip=false", "train.device=cpu", "eval.thresholds=[0.1, 0.2, 0.3]",
        "final.enabled=true", "final.iterations=4", "final.batch_size=4", "final.crop=32",
        "final.backbone_options={widths: [8, 16]}", "final.aspp_rates=[1, 2]"]

torch.set_num_threads(1)


# --- threshold rule ---------------------------------------------------------------------------------
def test_threshold_rule_fixed_best_and_probability(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"best": {"threshold": 0.35, "miou": 0.5}}))
    assert resolve_threshold(load_run_config(None, ["final.threshold=0.2"]), tmp_path) == 0.2
    assert resolve_threshold(load_run_config(None, ["final.threshold=best"]), tmp_path) == 0.35
    assert resolve_threshold(load_run_config(None, ["final.refine=probability"]), tmp_path) is None
    with pytest.raises(ConfigError, match="eval.json does not exist"):
        resolve_threshold(load_run_config(None, []), tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="final.threshold"):
        load_run_config(None, ["final.threshold=1.5"])
    with pytest.raises(ConfigError, match="final.threshold"):
        load_run_config(None, ["final.threshold=worst"])


def test_pseudo_label_at_a_threshold_by_hand():
    keys = np.array([0, 2])  # classes 0 and 2 → label values 1 and 3
    cams = np.array([[[0.9, 0.1, 0.3], [0.2, 0.25, 0.0], [0.5, 0.6, 0.31]],
                     [[0.1, 0.8, 0.2], [0.26, 0.1, 0.0], [0.6, 0.5, 0.3]]], np.float32)
    expected = np.zeros((3, 3), np.uint8)
    m, first = cams.max(0), np.array([1, 3])[cams.argmax(0)]
    expected[m > np.float32(0.25)] = first[m > np.float32(0.25)]  # 0.25 itself stays background
    assert expected.tolist() == [[1, 3, 1], [3, 0, 0], [3, 1, 1]]
    got = pseudo_label(None, keys, cams, 0.25, "none", RefineConfig())
    np.testing.assert_array_equal(got, expected)


def test_crf_refinement_is_the_confident_form_at_one_threshold():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)
    keys = np.array([1, 4])
    cams = rng.random((2, 12, 14)).astype(np.float32)
    options = RefineConfig()
    got = pseudo_label(image, keys, cams, 0.4, "crf", options)
    # CRF(argmax([t, cams])): the confident seeds with fg = bg threshold = t mark nothing uncertain
    same = crf_confident_labels(image, keys, cams, RefineConfig(fg_threshold=0.4, bg_threshold=0.4))
    np.testing.assert_array_equal(got, same)
    assert set(np.unique(got)) <= {0, 2, 5}


# --- the pipeline: labels, sharing, training, val -------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("final")


def run(overrides, workdir, until=None):
    trial = plan_trial(load_run_config(None, TINY + overrides), workdir, synthetic=SYNTH, until=until)
    run_trial(trial)
    return trial


def stage_summary(trial, name):
    return json.loads((Path(trial.stage(name).dir) / "stage.json").read_text())["summary"]


def test_pseudo_labels_are_the_evaluators_labels_at_the_best_threshold(workdir):
    trial = run(["final.split=train"], workdir, until="pseudo_labels")  # the eval split: its maps are reused
    labels = json.loads((Path(trial.stage("pseudo_labels").dir) / "pseudo_labels.json").read_text())
    scores = json.loads((Path(trial.stage("eval").dir) / "eval.json").read_text())
    assert labels["threshold"] == scores["best"]["threshold"] and labels["threshold_rule"] == "best"
    root = trial.config["data"]["root"]
    result = evaluate_label_dir(labels["labels_dir"], root, "train", protocol="irn")
    assert result["per_threshold"][0]["miou"] == pytest.approx(scores["best"]["miou"], abs=1e-12)
    with Image.open(next(Path(labels["labels_dir"]).glob("*.png"))) as img:
        assert img.mode == "P"  # palette PNGs


def test_two_rules_resolving_to_one_threshold_share_one_label_set(workdir):
    best = run([], workdir, until="pseudo_labels")
    first = json.loads((Path(best.stage("pseudo_labels").dir) / "pseudo_labels.json").read_text())
    assert first["split"] == "train_aug" and first["shared"] is False
    pngs = sorted(Path(first["labels_dir"]).glob("*.png"))
    assert len(pngs) == SYNTH["n_train"] + SYNTH["n_aug_extra"]  # maps made for train_aug, not just cams.split
    mtimes = [p.stat().st_mtime_ns for p in pngs]

    fixed = run([f"final.threshold={first['threshold']}"], workdir, until="pseudo_labels")
    assert fixed.stage("pseudo_labels").key != best.stage("pseudo_labels").key  # the rule differs ...
    second = json.loads((Path(fixed.stage("pseudo_labels").dir) / "pseudo_labels.json").read_text())
    assert second["labels_dir"] == first["labels_dir"] and second["shared"] is True  # ... the labels are one set
    assert [p.stat().st_mtime_ns for p in pngs] == mtimes
    assert fixed.stage("train").key == best.stage("train").key

    other = 0.1 if first["threshold"] != 0.1 else 0.2
    third = run([f"final.threshold={other}"], workdir, until="pseudo_labels")
    labels = json.loads((Path(third.stage("pseudo_labels").dir) / "pseudo_labels.json").read_text())
    assert labels["labels_dir"] != first["labels_dir"] and labels["threshold"] == other


def test_val_evaluation_equals_the_engine_on_the_same_predictions(workdir):
    trial = run([], workdir)
    assert [s.name for s in trial.stages][-3:] == ["pseudo_labels", "seg_train", "seg_eval"]
    record = json.loads(trial.record_path.read_text())
    assert record["state"] == "finished"
    assert record["eval_json"] == str(Path(trial.stage("eval").dir) / "eval.json")  # the trial's own scores
    val = Path(trial.stage("seg_eval").dir) / VAL_DIR
    ours = json.loads((val / "eval.json").read_text())
    root = trial.config["data"]["root"]
    engine = evaluate_label_dir(val / "predictions", root, "val", protocol="irn")
    for key in ("per_threshold", "boundary", "confusion_at_best", "protocol", "num_images"):
        assert ours[key] == json.loads(json.dumps(engine[key])), key
    summary = stage_summary(trial, "seg_eval")
    assert summary["final_miou"] == ours["per_threshold"][0]["miou"]
    assert len(list((val / "predictions").glob("*.png"))) == SYNTH["n_val"]
    # The predictions are the trained network's argmax at full size.
    cfg = load_run_config(None, TINY + [f"data.root={root}"])
    weights, _ = load_model_weights(trial.stage("seg_train").dir)
    net = build_segmentation_net("deeplab_v2", "small", 4, backbone_options={"widths": [8, 16]}, aspp_rates=(1, 2))
    net.load_state_dict(weights)
    net.eval()
    image_id = (Path(root) / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    image = np.array(Image.open(Path(root) / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
    from wsss_core.data.transforms import normalize_image

    with torch.no_grad():
        logits = net(torch.from_numpy(normalize_image(image))[None])
        expected = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0].argmax(0)
    with Image.open(val / "predictions" / f"{image_id}.png") as img:
        np.testing.assert_array_equal(np.array(img), expected.numpy())
    assert cfg.final.test_crf is False


def test_multiscale_flip_probabilities_by_formula():
    torch.manual_seed(0)
    net = build_segmentation_net("deeplab_v3plus", "small", 3, backbone_options={"widths": [8, 16]}, aspp_rates=(1,))
    net.eval()
    image = np.random.default_rng(1).integers(0, 255, (18, 22, 3), dtype=np.uint8)
    from wsss_core.data.transforms import normalize_image

    x = torch.from_numpy(normalize_image(image))[None]
    parts = []
    with torch.no_grad():
        for s in (1.0, 0.5):
            xs = x if s == 1.0 else F.interpolate(x, size=(9, 11), mode="bilinear", align_corners=False)
            for flip in (False, True):
                out = net(xs.flip(-1) if flip else xs)
                out = F.interpolate(out, size=(18, 22), mode="bilinear", align_corners=False).softmax(1)[0]
                parts.append(out.flip(-1) if flip else out)
    expected = torch.stack(parts).mean(0).numpy()
    got = predict_probabilities(net, image, (1.0, 0.5), True, torch.device("cpu"))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# --- networks ------------------------------------------------------------------------------------
def test_deeplab_v2_is_resnet101_with_summed_aspp_at_stride_8(tmp_path):
    torch.manual_seed(0)
    net = build_segmentation_net("deeplab_v2", "resnet101", 21)
    body = net.backbone
    assert [len(getattr(body, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 23, 3]
    assert [c.dilation[0] for c in net.head.branches] == [6, 12, 18, 24]
    x = torch.randn(1, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        feats = body.forward_stages(x)[-1]
        assert feats.shape[-2:] == (9, 9)  # output stride 8, ceil-mode max-pool as kazuto1011 (513 px → 65)
        expected = sum(F.conv2d(feats, c.weight, c.bias, padding=c.padding, dilation=c.dilation)
                       for c in net.head.branches)
        torch.testing.assert_close(net(x), expected)
    # torchvision names: an ImageNet file with an fc head loads; a ResNet-50 file does not
    state = {k: v for k, v in body.state_dict().items()}
    torch.save({**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, tmp_path / "r101.pth")
    again = build_segmentation_net("deeplab_v2", "resnet101", 21, pretrained=str(tmp_path / "r101.pth"))
    assert torch.equal(again.backbone.layer3[22].conv2.weight, body.layer3[22].conv2.weight)
    torch.save(DilatedResNet((3, 4, 6, 3)).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ConfigError, match="missing keys"):
        build_segmentation_net("deeplab_v2", "resnet101", 21, pretrained=str(tmp_path / "r50.pth"))


def test_deeplab_v3plus_resnet50_decoder_at_stride_4_and_msc():
    torch.manual_seed(0)
    net = build_segmentation_net("deeplab_v3plus", "resnet50", 5)
    net.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        assert net.backbone.forward_stages(x)[-1].shape[-2:] == (4, 4)  # output stride 16
        assert net(x).shape == (2, 5, 16, 16)  # the decoder at stride 4
    small = build_segmentation_net("deeplab_v2", "small", 3, backbone_options={"widths": [8, 16]}, aspp_rates=(1, 2))
    outs = small.forward_msc(torch.randn(1, 3, 32, 32), (1.0, 0.75, 0.5))
    assert len(outs) == 4 and all(o.shape == outs[0].shape for o in outs)
    torch.testing.assert_close(outs[-1], torch.max(torch.stack(outs[:3]), 0).values)
    assert isinstance(small, SegmentationNet)


# --- the trainer ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def learn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn") / "voc"
    generate_synthetic_voc(root, seed=3, n_train=24, n_val=12, size=48, num_classes=3, n_aug_extra=0,
                           show_progress=False)
    return root


def learn_overrides(root, iterations=40):
    return [f"data.root={root}", "train.device=cpu", "final.enabled=true", f"final.iterations={iterations}",
            "final.crop=40", "final.batch_size=8", "final.backbone_options={widths: [16, 32]}",
            "final.aspp_rates=[1, 2]", "final.lr=0.02", "final.split=train", "train.checkpoint_every=4"]


def test_trained_on_ground_truth_scores_far_above_all_background(learn_root, tmp_path):
    cfg = load_run_config(None, learn_overrides(learn_root))
    background = tmp_path / "background"
    background.mkdir()
    for path in (learn_root / "SegmentationClass").glob("*.png"):
        with Image.open(path) as img:
            Image.fromarray(np.zeros_like(np.array(img))).save(background / path.name)
    scores = {}
    for name, labels in (("gt", learn_root / "SegmentationClass"), ("background", background)):
        train_segmentation(cfg, labels, tmp_path / name)
        scores[name] = evaluate_segmentation(cfg, tmp_path / name, tmp_path / name / "val")["final_miou"]
    assert scores["gt"] > scores["background"] + 0.25, scores
    assert scores["background"] < 0.3


def test_segmentation_training_resumes_exactly_after_a_kill(learn_root, tmp_path):
    overrides = learn_overrides(learn_root, iterations=10) + ["final.train_scales=[1.0, 0.75]",
                                                              "final.scale=[0.7, 1.3]"]
    labels = learn_root / "SegmentationClass"
    reference = train_segmentation(load_run_config(None, overrides), labels, tmp_path / "uninterrupted")
    assert reference["steps"] == 10
    run_dir = tmp_path / "killed"
    script = ("import sys; from wsss_core.training.config import load_run_config; "
              "from wsss_core.training.segmentation import train_segmentation; "
              "train_segmentation(load_run_config(None, sys.argv[3:]), sys.argv[1], sys.argv[2])")
    env = {**os.environ, KILL_AFTER_STEP_ENV: "5", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "WSSS_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", script, str(labels), str(run_dir), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(checkpoint_path(run_dir))["position"] == {"step": 4, "epoch": 1, "batch": 1}  # mid-epoch
    resumed = train_segmentation(load_run_config(None, overrides), labels, run_dir)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 10
    expected, _ = load_model_weights(tmp_path / "uninterrupted")
    got, _ = load_model_weights(run_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_amn_chain_trains_the_final_network_on_amns_maps(workdir):
    trial = run(["model.baseline=amn", "model.options={aspp_rates: [1, 2], training: {epochs: 1, lr: 0.001}}"],
                workdir)
    names = [s.name for s in trial.stages]
    assert names[-4:] == ["amn_eval", "amn_pseudo_labels", "seg_train", "seg_eval"]
    labels = json.loads((Path(trial.stage("amn_pseudo_labels").dir) / "pseudo_labels.json").read_text())
    scores = json.loads((Path(trial.stage("amn_eval").dir) / "eval.json").read_text())
    assert labels["threshold"] == scores["best"]["threshold"] and labels["split"] == "train_aug"
    assert (Path(trial.stage("amn_pseudo_labels").dir) / "maps").is_dir()  # AMN's maps made for train_aug
    assert len(list(Path(labels["labels_dir"]).glob("*.png"))) == SYNTH["n_train"] + SYNTH["n_aug_extra"]
    assert stage_summary(trial, "seg_eval")["final_miou"] is not None
    assert Path(trial.stage("amn_pseudo_labels").dir).parent.name == "pseudo_labels"  # stored as the CAM chain's


def test_test_time_crf_defaults_are_kazuto1011s_and_clean_a_noisy_map():
    from wsss_core.evaluation.crf import CrfParams
    from wsss_core.training.segmentation import crf_refine

    params = load_run_config(None, []).final.test_crf_params
    assert params == {"gaussian_sxy": 1.0, "gaussian_compat": 3.0, "bilateral_sxy": 67.0, "bilateral_srgb": 3.0,
                      "bilateral_compat": 4.0, "iterations": 10}
    image = np.zeros((24, 24, 3), np.uint8)
    image[:, 12:] = 255  # object on the right half
    clean = np.zeros((24, 24), np.uint8)
    clean[:, 12:] = 1
    noisy = clean.copy()
    flip = np.random.default_rng(0).random((24, 24)) < 0.1
    noisy[flip] = 1 - noisy[flip]
    probs = np.where(np.arange(2)[:, None, None] == noisy[None], 0.7, 0.3).astype(np.float32)
    refined = crf_refine(image, probs, CrfParams(**params))
    assert (probs.argmax(0) != clean).sum() == flip.sum() > 0
    np.testing.assert_array_equal(refined, clean)
