"""CAM generation as the references do it (IRN make_cam, SEAM infer_SEAM, AMN make_amn_cam): PIL bicubic
per-scale inputs, IRN's stride-aligned upsample then crop, the defaults being that path, and batching
same-size images giving the maps of one image at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsss_core.baselines.base import scaled_inputs, scaled_size, strided_up_size, upsample_maps
from wsss_core.baselines.compose import build_model
from wsss_core.data import build_dataset
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.evaluation import CamStore
from wsss_core.training.cams import write_store_shard
from wsss_core.training.config import CamsConfig, ModelConfig, load_run_config
from wsss_core.training.distributed import DistEnv

torch.set_num_threads(1)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def model_of(baseline, output_stride=4, num_classes=3):
    cfg = ModelConfig(baseline=baseline, backbone="small",
                      backbone_options={"widths": [8, 16, 16, 16], "output_stride": output_stride})
    cfg.validate("model")
    torch.manual_seed(0)
    model = build_model(cfg, [], num_classes)
    return model.eval()


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def bilinear_at(grid: np.ndarray, out_size: tuple[int, int], y: int, x: int) -> float:
    """Bilinear (align_corners=False) value of a 2-D ``grid`` resized to ``out_size``, at output pixel (y, x):
    source coordinate (d + 0.5) · in / out − 0.5, clamped at 0; neighbours clamped at the last row/column."""
    def axis(d, n_in, n_out):
        src = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
        low = int(math.floor(src))
        return low, min(low + 1, n_in - 1), src - low
    y0, y1, ly = axis(y, grid.shape[0], out_size[0])
    x0, x1, lx = axis(x, grid.shape[1], out_size[1])
    return float((1 - ly) * ((1 - lx) * grid[y0, x0] + lx * grid[y0, x1])
                 + ly * ((1 - lx) * grid[y1, x0] + lx * grid[y1, x1]))


# --- sizes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, stride", [((375, 500), 16), ((96, 96), 4), ((1, 17), 16), ((33, 8), 8)])
def test_stride_aligned_size_rounds_each_side_up_to_a_multiple_of_the_stride(size, stride):
    expected = (math.ceil(size[0] / stride) * stride, math.ceil(size[1] / stride) * stride)
    assert strided_up_size(size, stride) == expected
    assert strided_up_size((375, 500), 16) == (384, 512) and strided_up_size((96, 96), 4) == (96, 96)


def test_scaled_size_rounds_half_to_even_as_numpy_round():
    for size, scale in [((375, 500), 0.5), ((37, 50), 0.5), ((375, 333), 1.5), ((3, 5), 0.1)]:
        expected = tuple(max(1, int(np.round(side * scale))) for side in size)
        assert scaled_size(size, scale) == expected
    assert scaled_size((37, 45), 0.5) == (18, 22)  # 18.5 -> 18, 22.5 -> 22


# --- upsample then crop ---------------------------------------------------------------------------
def test_stride_aligned_upsample_then_crop_equals_bilinear_to_the_aligned_size():
    grid = np.arange(12, dtype=np.float32).reshape(3, 4) ** 1.5  # a 3 x 4 map of a 10 x 13 image, stride 4
    maps = torch.from_numpy(grid)[None, None]
    aligned = upsample_maps(maps, (10, 13), stride=4)[0, 0].numpy()
    direct = upsample_maps(maps, (10, 13))[0, 0].numpy()
    assert aligned.shape == direct.shape == (10, 13)
    for y, x in [(0, 0), (5, 7), (9, 12), (3, 11)]:
        assert aligned[y, x] == pytest.approx(bilinear_at(grid, (12, 16), y, x), abs=1e-4)
        assert direct[y, x] == pytest.approx(bilinear_at(grid, (10, 13), y, x), abs=1e-4)
    # pixel (9, 12) samples source (1.875, 2.625) of the aligned map, (2.35, 3.35 -> column 3) of the direct one
    assert aligned[9, 12] == pytest.approx(bilinear_at(grid, (12, 16), 9, 12), abs=1e-4)
    assert abs(aligned[9, 12] - direct[9, 12]) > 0.5


# --- per-scale inputs -----------------------------------------------------------------------------
def test_pil_bicubic_inputs_are_pil_resized_uint8_then_normalised():
    image = random_image(37, 50)
    inputs = scaled_inputs([image], (1.0, 0.5, 1.5), resize="pil_bicubic")
    for scale, level in zip(inputs.scales, inputs.levels):
        height, width = int(np.round(37 * scale)), int(np.round(50 * scale))
        resized = image if scale == 1.0 else np.asarray(Image.fromarray(image).resize((width, height),
                                                                                          Image.BICUBIC))
        expected = ((resized / 255.0 - MEAN) / STD).transpose(2, 0, 1)
        assert level.shape == (1, 3, height, width)
        np.testing.assert_allclose(level[0].numpy(), expected, atol=2e-6)
    # the tensor path resizes the normalised image bilinearly instead: a different input
    tensor = scaled_inputs([image], (1.0, 0.5, 1.5), resize="tensor_bilinear")
    assert torch.equal(tensor.levels[0], inputs.levels[0])
    assert (tensor.levels[1] - inputs.levels[1]).abs().max() > 0.1


def test_scaled_inputs_refuse_mixed_sizes_and_unknown_resize():
    with pytest.raises(ValueError, match="one size"):
        scaled_inputs([random_image(8, 8), random_image(8, 9)], (1.0,))
    with pytest.raises(ValueError, match="cams.resize.*pil_bicubic"):
        scaled_inputs([random_image(8, 8)], (1.0,), resize="bicubic")


# --- the whole map, by formula --------------------------------------------------------------------
def test_cam_maps_follow_irn_order_relu_flip_upsample_sum_crop_normalise():
    model = model_of("cam", output_stride=4).baseline
    image, label = random_image(30, 43), torch.tensor([1.0, 0.0, 1.0])
    scales = (1.0, 0.5)
    inputs = scaled_inputs([image], scales)
    result = model.multiscale_cams(inputs, label, scales, flip=True)
    total = 0
    aligned = (math.ceil(30 / 4) * 4, math.ceil(43 / 4) * 4)  # 32 x 44
    for level in inputs.levels:  # IRN: ReLU per forward, flipped map flipped back and added, upsampled to
        with torch.no_grad():    # the stride-aligned size, summed over scales, cropped to 30 x 43
            maps = F.relu(model.cam_logits(torch.cat([level, level.flip(-1)])))
        maps = maps[:1] + maps[1:].flip(-1)
        total = total + F.interpolate(maps, size=aligned, mode="bilinear", align_corners=False)
    total = total[0, [0, 2], :30, :43]
    expected = total / (total.flatten(1).max(dim=1).values[:, None, None] + 1e-5)
    assert result.keys == [0, 2] and result.cams.shape == (2, 30, 43)
    torch.testing.assert_close(result.cams, expected, atol=1e-6, rtol=1e-5)


def test_tensor_path_setting_is_the_previous_behaviour():
    """cams.resize=tensor_bilinear, cams.upsample=direct: normalised tensor resized bilinearly, maps upsampled
    straight to H x W (what the project did before the reference path became the default)."""
    model = model_of("cam", output_stride=4).baseline
    image, label = random_image(30, 43), torch.tensor([0.0, 1.0, 0.0])
    full = scaled_inputs([image], (1.0,)).levels[0]
    total = 0
    for scale in (1.0, 0.5):
        scaled = full if scale == 1.0 else F.interpolate(full, size=(15, 22), mode="bilinear", align_corners=False)
        with torch.no_grad():
            maps = F.relu(model.cam_logits(torch.cat([scaled, scaled.flip(-1)])))
        total = total + F.interpolate(maps[:1] + maps[1:].flip(-1), size=(30, 43), mode="bilinear",
                                      align_corners=False)
    expected = total[0, [1]] / (total[0, 1].max() + 1e-5)
    inputs = scaled_inputs([image], (1.0, 0.5), resize="tensor_bilinear")
    got = model.multiscale_cams(inputs, label, (1.0, 0.5), True, upsample="direct")
    torch.testing.assert_close(got.cams, expected, atol=1e-6, rtol=1e-5)


def test_upsampling_rule_per_baseline():
    assert model_of("cam", output_stride=8).baseline.map_stride() == 8  # IRN: the model's output stride
    assert model_of("cam", output_stride=8).baseline.map_stride("direct") is None
    assert model_of("seam").baseline.map_stride() is None  # infer_SEAM.py: straight to H x W
    assert model_of("amn").baseline.map_stride() is None  # make_amn_cam: straight to H x W
    with pytest.raises(ValueError, match="cams.upsample"):
        model_of("cam").baseline.map_stride("aligned")


# --- defaults -------------------------------------------------------------------------------------
def test_defaults_are_the_reference_path():
    cams = load_run_config(None, []).cams
    assert (cams.resize, cams.upsample) == ("pil_bicubic", "reference") == (CamsConfig().resize,
                                                                             CamsConfig().upsample)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "voc"
    return generate_synthetic_voc(root, seed=0, n_train=16, n_val=2, size=40, num_classes=3, n_aug_extra=0,
                                  show_progress=False)


def write_store(root, out, overrides, baseline="cam"):
    cfg = load_run_config(None, [f"data.root={root}", "cams.scales=[1.0, 0.5, 1.5]", *overrides])
    dataset = build_dataset("voc", root, "train")
    model = model_of(baseline, output_stride=4, num_classes=dataset.num_classes).baseline
    store = CamStore.create(out, dataset.num_classes)
    infer = lambda samples, inputs, labels: model.batch_cams(inputs, labels, cfg.cams.flip,  # noqa: E731
                                                             cfg.cams.upsample)
    write_store_shard(store, dataset, DistEnv(), cfg, infer, desc="test")
    return dataset, model, store


def test_written_cams_with_default_settings_are_the_reference_maps(synth_root, tmp_path):
    dataset, model, store = write_store(synth_root, tmp_path / "default", [])
    differs_from_tensor = 0.0
    for index in range(len(dataset)):
        sample = dataset.load(index)
        label = torch.from_numpy(sample["label"])
        scales = (1.0, 0.5, 1.5)
        reference = model.multiscale_cams(scaled_inputs([sample["image"]], scales), label, scales, True)
        tensor = model.multiscale_cams(scaled_inputs([sample["image"]], scales, "tensor_bilinear"), label, scales,
                                       True, upsample="direct")
        keys, cams = store.read(sample["id"])
        assert list(keys) == reference.keys
        np.testing.assert_allclose(cams, reference.cams.numpy(), atol=1e-5)
        differs_from_tensor = max(differs_from_tensor, float(np.abs(cams - tensor.cams.numpy()).max()))
    assert differs_from_tensor > 0.01  # the default is not the tensor path


# --- batching -------------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["cam", "seam", "amn"])
def test_a_batch_of_same_size_images_gives_each_image_its_own_maps(baseline):
    model = model_of(baseline).baseline
    images = [random_image(29, 42, seed) for seed in range(3)]
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    scales = (1.0, 0.5, 1.5)
    batched = model.batch_cams(scaled_inputs(images, scales), labels, True)
    for image, label, result in zip(images, labels, batched):
        alone = model.multiscale_cams(scaled_inputs([image], scales), label, scales, True)
        assert result.keys == alone.keys
        assert (result.cams - alone.cams).abs().max() <= 1e-5
        if alone.bg is not None:
            assert (result.bg - alone.bg).abs().max() <= 1e-5


def test_batched_store_equals_one_image_at_a_time(synth_root, tmp_path):
    dataset = build_dataset("voc", synth_root, "train")
    sizes = [dataset.load(i)["image"].shape[:2] for i in range(len(dataset))]
    assert len(set(sizes)) < len(sizes)  # some images share a size, so some forwards hold several images
    _, _, one = write_store(synth_root, tmp_path / "one", ["cams.batch_size=1"], baseline="seam")
    _, _, batched = write_store(synth_root, tmp_path / "batched", ["cams.batch_size=3"], baseline="seam")
    assert sorted(one.ids()) == sorted(batched.ids()) and len(one) == len(dataset)
    for image_id in one.ids():
        keys_one, cams_one = one.read(image_id)
        keys_batched, cams_batched = batched.read(image_id)
        assert list(keys_one) == list(keys_batched)
        assert np.abs(cams_one - cams_batched).max() <= 1e-5


def test_batch_size_is_not_part_of_the_cams_key():
    from wsss_core.training.config import stage_key

    base = load_run_config(None, [])
    assert stage_key(base, "cams") == stage_key(load_run_config(None, ["cams.batch_size=16"]), "cams")
    assert stage_key(base, "cams") != stage_key(load_run_config(None, ["cams.resize=tensor_bilinear"]), "cams")
    with pytest.raises(Exception, match="cams.batch_size"):
        load_run_config(None, ["cams.batch_size=0"])
