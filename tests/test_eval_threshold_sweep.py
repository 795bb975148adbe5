"""One-pass threshold sweep == a straightforward per-threshold evaluation, exactly."""

import numpy as np
import pytest

from wsss_core.errors import CamStoreError, ConfigError
from wsss_core.evaluation import CamStore, evaluate_cams, evaluate_label_dir
from wsss_core.evaluation.synthetic import write_synthetic_voc
from wsss_core.evaluation.threshold_sweep import (ThresholdBinner, ThresholdSweep, default_thresholds,
                                                  parse_thresholds, robustness, validate_thresholds)
from wsss_core.evaluation.crf import write_label_png

C = 6


def naive_confusions(images, thresholds, num_classes):
    """The references' loop: per threshold, pad [t, cams], argmax, map to keys, bincount (gt 255 ignored)."""
    out = np.zeros((len(thresholds), num_classes + 1, num_classes + 1), np.int64)
    for j, t in enumerate(thresholds):
        for keys, cams, gt in images:
            padded = np.concatenate([np.full((1, *gt.shape), t, np.float32), cams])
            pred = np.concatenate([[0], keys + 1])[padded.argmax(0)]
            keep = gt != 255
            out[j] += np.bincount(gt[keep].astype(int) * (num_classes + 1) + pred[keep],
                                  minlength=(num_classes + 1) ** 2).reshape(num_classes + 1, num_classes + 1)
    return out


def random_images(rng, thresholds, n=25):
    t32 = np.asarray(thresholds, np.float32)
    images = []
    for _ in range(n):
        h, w = rng.integers(4, 24, 2)
        k = rng.integers(0, 4)  # includes images with no keys
        keys = np.sort(rng.choice(C, k, replace=False))
        cams = rng.random((k, h, w), dtype=np.float32)
        if cams.size:  # values exactly at thresholds and their float32 neighbours
            at = rng.random(cams.shape) < 0.4
            picks = rng.choice(t32, cams.shape)
            nudge = rng.integers(-1, 2, cams.shape)
            picks = np.where(nudge < 0, np.nextafter(picks, np.float32(-1)), picks)
            picks = np.where(nudge > 0, np.nextafter(picks, np.float32(2)), picks)
            cams[at] = np.abs(picks[at])
        if k >= 2:
            cams[1, 0] = cams[0, 0]  # exact ties between classes: lowest class wins
        gt = rng.choice(np.array([0, 1, 2, 3, 4, 5, 6, 255], np.uint8), (h, w))
        images.append((keys, cams, gt))
    return images


# uniform: the compiled kernel's (a + b) / d threshold; irregular: its lookup table; nearly uniform: a grid
# the estimate accepts but (a + b) / d does not reproduce (0.1000001), so the lookup table again
GRIDS = {"uniform": default_thresholds(), "irregular": [0.0, 0.05, 0.1, 0.33, 0.5, 0.71, 1.0],
         "nearly-uniform": [0.0, 0.1000001, 0.2, 0.3, 0.4], "one": [0.25]}


@pytest.mark.parametrize("kernel", ["compiled", "numpy"])
@pytest.mark.parametrize("grid", list(GRIDS))
def test_one_pass_matches_per_threshold_loop(grid, kernel):
    thresholds = GRIDS[grid]
    rng = np.random.default_rng(0)
    images = random_images(rng, thresholds)
    images += [(keys, cams * np.float32(3), gt) for keys, cams, gt in random_images(rng, thresholds, 5)]  # >= 2
    sweep = ThresholdSweep(C, thresholds, kernel=kernel)
    for i, (keys, cams, gt) in enumerate(images):
        sweep.add(str(i), keys, cams, gt)
    np.testing.assert_array_equal(sweep.confusions(), naive_confusions(images, thresholds, C))


def test_compiled_grid_modes():
    from wsss_core.evaluation.threshold_sweep import _CompiledGrid

    def grid(values):
        return _CompiledGrid(ThresholdBinner(values), values)
    assert grid(default_thresholds()).uniform and grid(parse_thresholds("0.1:0.9:0.025")).uniform
    assert not grid(GRIDS["nearly-uniform"]).uniform and not grid(GRIDS["irregular"]).uniform


def test_compiled_and_numpy_sweeps_agree_and_survive_pickling():
    import pickle

    rng = np.random.default_rng(3)
    thresholds = default_thresholds()
    images = random_images(rng, thresholds, n=12)
    a, b = ThresholdSweep(C, thresholds, kernel="compiled"), ThresholdSweep(C, thresholds, kernel="numpy")
    for i, (keys, cams, gt) in enumerate(images):
        a.add(str(i), keys, cams, gt)
        b.add(str(i), keys, cams, gt)
    a = pickle.loads(pickle.dumps(a))  # what a worker process sends back
    np.testing.assert_array_equal(a.confusions(), b.confusions())
    a.merge(b)
    np.testing.assert_array_equal(a.hist, 2 * b.hist)
    with pytest.raises(ConfigError, match="kernel: 'fast' is not valid; valid choices: 'auto', 'compiled', 'numpy'"):
        ThresholdSweep(C, thresholds, kernel="fast")


def test_binner_exact_at_and_around_every_threshold():
    for thresholds in (default_thresholds(), [round(0.2 + 0.03 * i, 2) for i in range(20)]):
        t32 = np.asarray(thresholds, np.float32)
        values = np.concatenate([t32, np.nextafter(t32, np.float32(-1)), np.nextafter(t32, np.float32(2)),
                                 np.float32([0, 1e-9, 0.999999, 1, 1.5, 7e30])])
        values = np.abs(values).astype(np.float32)
        binner = ThresholdBinner(thresholds)
        assert binner.uniform
        out = np.empty(values.size, np.int64)
        binner.bins(values, out, np.empty_like(values), np.empty(values.size, bool))
        np.testing.assert_array_equal(out, np.searchsorted(t32, values, side="left"))


def test_evaluate_cams_matches_naive_and_workers_agree(tmp_path):
    ids = write_synthetic_voc(tmp_path / "voc", 40, num_classes=C, size=(30, 40), store_path=tmp_path / "cams",
                              jpeg=False)
    store = CamStore(tmp_path / "cams")
    from wsss_core.evaluation.ground_truth import read_gt_mask
    images = [(*store.read(i), read_gt_mask(tmp_path / "voc", i)) for i in ids]
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5]
    one = evaluate_cams(tmp_path / "cams", tmp_path / "voc", "train", thresholds=thresholds, boundary_thresholds=[])
    naive = naive_confusions(images, thresholds, C)
    for j, row in enumerate(one["per_threshold"]):
        conf = naive[j].astype(float)
        tp = np.diag(conf)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = tp / (conf.sum(0) + conf.sum(1) - tp)
        assert row["miou"] == pytest.approx(np.nanmean(iou))
    assert one["best"]["miou"] == max(r["miou"] for r in one["per_threshold"])
    assert one["num_images"] == 40
    two = evaluate_cams(tmp_path / "cams", tmp_path / "voc", "train", thresholds=thresholds, boundary_thresholds=[],
                        workers=2)
    assert two["per_threshold"] == one["per_threshold"]


@pytest.mark.parametrize("pred_255", ["wrong", "ignore"])
def test_label_dir_pred_255_options(tmp_path, pred_255):
    ids = write_synthetic_voc(tmp_path / "voc", 6, num_classes=C, size=(20, 30), jpeg=False)
    rng = np.random.default_rng(1)
    (tmp_path / "labels").mkdir()
    conf = np.zeros((C + 1, C + 1))
    gt_total = np.zeros(C + 1)
    from wsss_core.evaluation.ground_truth import read_gt_mask
    for i in ids:
        gt = read_gt_mask(tmp_path / "voc", i)
        pred = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), gt.shape)
        write_label_png(pred, tmp_path / "labels" / f"{i}.png")
        keep = (gt != 255) & ((pred != 255) if pred_255 == "ignore" else True)
        for g, p in zip(gt[keep], pred[keep]):
            gt_total[g] += 1
            if p != 255:
                conf[g, p] += 1
    result = evaluate_label_dir(tmp_path / "labels", tmp_path / "voc", "train", pred_255=pred_255, boundary=False,
                                protocol="project")  # the protocol where pred_255 is a choice
    tp = np.diag(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gt_total + conf.sum(0) - tp)
    assert result["per_threshold"][0]["miou"] == pytest.approx(np.nanmean(iou))
    assert [x if x is not None else np.nan for x in result["per_threshold"][0]["iou"]] == \
        pytest.approx(iou.tolist(), nan_ok=True)


def test_robustness_on_a_hand_made_curve():
    t = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    y = [0.30, 0.50, 0.595, 0.60, 0.592, 0.585, 0.40]
    rob = robustness(t, y)
    assert (rob.plateau_low, rob.plateau_high) == (0.2, 0.4)  # 0.585 is 1.5 points below: outside
    assert rob.plateau_width == pytest.approx(0.2)
    assert rob.mean_miou_near_best == pytest.approx(np.mean([0.595, 0.60, 0.592]))


def test_threshold_parsing_and_validation():
    assert parse_thresholds("0:0.95:0.01") == default_thresholds()
    assert len(default_thresholds()) == 96
    assert parse_thresholds("0.3,0.1,0.2") == [0.1, 0.2, 0.3]
    with pytest.raises(ConfigError, match=r"within \[0, 1\]"):
        validate_thresholds([0.1, 1.5])
    with pytest.raises(ConfigError, match="duplicate"):
        validate_thresholds([0.1, 0.1])
    with pytest.raises(ConfigError, match="START:STOP:STEP"):
        parse_thresholds("a:b")


def test_bad_inputs_name_the_image(tmp_path):
    ids = write_synthetic_voc(tmp_path / "voc", 3, num_classes=C, size=(10, 12), store_path=tmp_path / "cams",
                              jpeg=False)
    (tmp_path / "cams" / f"{ids[1]}.cam").unlink()
    with pytest.raises(CamStoreError, match=f"1 of 3 images .* no CAMs, e.g. {ids[1]}"):
        evaluate_cams(tmp_path / "cams", tmp_path / "voc", "train")
    store = CamStore(tmp_path / "cams")
    store.write(ids[1], np.array([0]), np.ones((1, 9, 12), np.float32))
    with pytest.raises(CamStoreError, match=rf"{ids[1]}.*CAM shape \(9, 12\) differs .* \(10, 12\)"):
        evaluate_cams(tmp_path / "cams", tmp_path / "voc", "train")
    for kernel in ("compiled", "numpy"):
        for grid in ([0.5], default_thresholds()):
            sweep = ThresholdSweep(C, grid, kernel=kernel)
            for keys in ([1], [1, 2], [1, 2, 4]):
                shape = (len(keys), 2, 2)
                with pytest.raises(CamStoreError, match="'img7'.*NaN"):
                    sweep.add("img7", np.array(keys), np.full(shape, np.nan, np.float32), np.zeros((2, 2), np.uint8))
                with pytest.raises(CamStoreError, match="'img8'.*negative"):
                    sweep.add("img8", np.array(keys), np.full(shape, -1, np.float32), np.zeros((2, 2), np.uint8))
                with pytest.raises(CamStoreError, match="'img8'.*infinite"):
                    sweep.add("img8", np.array(keys), np.full(shape, np.inf, np.float32), np.zeros((2, 2), np.uint8))
            with pytest.raises(CamStoreError, match="'img9'.*outside the class range"):
                sweep.add("img9", np.array([C]), np.ones((1, 2, 2), np.float32), np.zeros((2, 2), np.uint8))
            with pytest.raises(CamStoreError, match="'img10'.*ground truth has values \\[9\\]"):
                sweep.add("img10", np.array([1]), np.ones((1, 2, 2), np.float32), np.full((2, 2), 9, np.uint8))
            with pytest.raises(CamStoreError, match="'img11'.*ground truth has values \\[7\\]"):
                sweep.add("img11", np.array([], np.int64), np.ones((0, 2, 2), np.float32), np.full((2, 2), 7, np.uint8))
            ok = ThresholdSweep(C, grid, kernel=kernel)  # -0.0 is a valid (zero) activation
            ok.add("img12", np.array([1]), np.full((1, 2, 2), -0.0, np.float32), np.zeros((2, 2), np.uint8))
            assert ok.confusions()[:, 0, 0].tolist() == [4] * len(grid)
