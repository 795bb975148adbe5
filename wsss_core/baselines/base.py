"""The baseline interface: what every WSSS baseline (CAM, SEAM, AMN, …) tells the rest of the system.

A baseline owns its network (backbone + head), its losses and its CAM inference. During training it
declares where its CAM logits are (:class:`CamSite`: N × C × h × w, background excluded) and routes
every image-level classification through ``self.classify`` (the pooling step). That is all an add-on
needs: an add-on may replace ``classify`` (global average pooling → importance sampling) and/or add
loss terms computed from each CAM site and the input image (feature similarity). So any baseline
composes with any subset of add-ons from config, with no per-combination code (see ``compose.py``).

How the later baselines fit:
- SEAM: two branches (full crop, rescaled crop), each a CAM site classified through ``classify``; the
  PCM-refined CAMs are a site too (with ``regularise`` as the author chooses); ER/ECR go in ``losses``;
  it overrides :meth:`Baseline.infer_logits` to return the PCM output and :meth:`normalise_cams` to do
  min-max.
- AMN: a label-conditioned per-pixel classifier trained on seed labels; ``uses_pooling = False`` (no
  image-level pooling, so a pooling add-on is refused at config time); its foreground logit channels
  are its CAM site; it overrides :meth:`Baseline.batch_cams` for its softmax-over-C+1 inference.

CAM generation (:meth:`Baseline.batch_cams`) as the references do it: each scale's input is the uint8 image
resized with PIL bicubic, then normalised (:func:`scaled_inputs`); one forward per scale holds the images of
a same-size batch and their mirror images; the maps go to image size by the baseline's reference rule
(``cam_upsampling``: IRN aligns to the output stride and crops, SEAM and AMN go straight to H x W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import normalize_image, resize_bicubic

# Classification step: CAM logits (N×C×h×w) and multi-hot labels (N×C) → named loss terms.
ClassificationLoss = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def global_average_pooling_loss(logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """The default pooling: GAP of the CAM logits, multilabel soft margin (= mean BCE-with-logits)."""
    pooled = logits.float().mean(dim=(2, 3))
    return {"cls": F.multilabel_soft_margin_loss(pooled, label.float())}


@dataclass
class CamSite:
    """One place where a baseline computes CAM logits during training."""

    logits: torch.Tensor  # N × C × h × w, background excluded
    image: torch.Tensor  # the network input that produced them, N × 3 × H × W (normalised)
    label: torch.Tensor  # N × C multi-hot
    regularise: bool = True  # whether add-on loss terms (e.g. feature similarity) apply here


@dataclass
class TrainOutput:
    """A training forward: named loss terms (already weighted; the total is their sum) and CAM sites."""

    losses: dict[str, torch.Tensor]
    sites: dict[str, CamSite]


@dataclass
class ParamGroup:
    """Parameters sharing a learning-rate multiplier (the references' 1× backbone, 10× head, …)."""

    name: str
    params: list[nn.Parameter]
    lr_mult: float = 1.0
    weight_decay_mult: float = 1.0


@dataclass
class CamResult:
    """CAMs of one image at image size: ground-truth class keys (0-based), K × H × W maps, optional bg."""

    keys: list[int]
    cams: torch.Tensor
    bg: torch.Tensor | None = None


# --- CAM generation inputs and upsampling ---------------------------------------------------------
# How each scale's network input is made: "pil_bicubic" (the references: the uint8 image resized with PIL's
# bicubic filter, then normalised) or "tensor_bilinear" (the normalised image resized bilinearly as a tensor).
CamResize = Literal["pil_bicubic", "tensor_bilinear"]
CAM_RESIZE = ("pil_bicubic", "tensor_bilinear")
# How each scale's maps reach image size: "reference" (the baseline's reference rule, ``cam_upsampling``)
# or "direct" (bilinear straight to H x W for every baseline).
CamUpsample = Literal["reference", "direct"]
CAM_UPSAMPLE = ("reference", "direct")


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """An image's size at ``scale`` as the references round it (IRN ``int(np.round(h * s))``, SEAM
    ``round(h * s)``: half to even), at least 1 px."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def strided_up_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """IRN's ``get_strided_up_size``: each side rounded up to a multiple of ``stride``."""
    return -(-size[0] // stride) * stride, -(-size[1] // stride) * stride


def upsample_maps(maps: torch.Tensor, size: tuple[int, int], stride: int | None = None) -> torch.Tensor:
    """N x K x h x w maps to N x K x H x W, bilinear (align_corners=False). With ``stride`` as IRN's make_cam:
    to the size rounded up to a multiple of the stride, then cropped to H x W, so each output-stride cell of
    the map covers the same ``stride`` x ``stride`` pixels it saw."""
    if stride is None:
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    aligned = F.interpolate(maps, size=strided_up_size(size, stride), mode="bilinear", align_corners=False)
    return aligned[..., :size[0], :size[1]]


@dataclass
class ScaledInputs:
    """Network inputs of a batch of same-size images at each scale: ``levels[i]`` is N x 3 x h_i x w_i
    (normalised) for ``scales[i]``; ``size`` is the images' own H x W."""

    size: tuple[int, int]
    scales: tuple[float, ...]
    levels: list[torch.Tensor]


def scaled_inputs(images: Sequence[np.ndarray], scales: Sequence[float], resize: CamResize = "pil_bicubic",
                  device: torch.device | str | None = None) -> ScaledInputs:
    """The per-scale inputs of uint8 H x W x 3 images of one size. ``pil_bicubic`` (the references): each
    scale is the uint8 image resized with PIL bicubic to :func:`scaled_size`, then normalised;
    ``tensor_bilinear``: the normalised image resized bilinearly (align_corners=False) as a tensor."""
    if resize not in CAM_RESIZE:
        raise ValueError(f"cams.resize: {resize!r} is not one of {', '.join(CAM_RESIZE)}")
    sizes = {image.shape[:2] for image in images}
    if len(sizes) != 1:
        raise ValueError(f"scaled_inputs: one batch needs images of one size, got {sorted(sizes)}")
    size = tuple(images[0].shape[:2])
    if resize == "tensor_bilinear":
        full = torch.from_numpy(np.stack([normalize_image(image) for image in images])).to(device)
        return tensor_scaled_inputs(full, scales)
    levels = []
    for scale in scales:
        height, width = scaled_size(size, scale)
        level = np.stack([normalize_image(resize_bicubic(image, height, width)) for image in images])
        levels.append(torch.from_numpy(level).to(device))
    return ScaledInputs(size, tuple(scales), levels)


def tensor_scaled_inputs(image: torch.Tensor, scales: Sequence[float]) -> ScaledInputs:
    """The per-scale inputs of normalised images (N x 3 x H x W), resized bilinearly as tensors."""
    size = tuple(image.shape[-2:])
    levels = [image if scaled_size(size, scale) == size else
              F.interpolate(image, size=scaled_size(size, scale), mode="bilinear", align_corners=False)
              for scale in scales]
    return ScaledInputs(size, tuple(scales), levels)


@dataclass
class NoOptions:
    """Baselines without options accept an empty ``model.options`` mapping."""


class Baseline(nn.Module):
    """Base class of baselines. Subclasses set ``Options`` and implement the abstract methods."""

    Options: ClassVar[type] = NoOptions
    uses_pooling: ClassVar[bool] = True  # False: no image-level classification, pooling add-ons refused
    # How the reference brings each scale's maps to image size: IRN's make_cam aligns to the output stride
    # ("stride_aligned", see :func:`upsample_maps`); SEAM/HFPL and AMN upsample straight to H x W ("direct").
    cam_upsampling: ClassVar[Literal["stride_aligned", "direct"]] = "stride_aligned"

    def __init__(self, num_classes: int, backbone: nn.Module, options: Any = None):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.options = options if options is not None else self.Options()
        self.classify: ClassificationLoss = global_average_pooling_loss

    # --- training -------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        return self.forward_train(image, label)

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        raise NotImplementedError

    def param_groups(self) -> list[ParamGroup]:
        """Trainable parameters by group; the default is the backbone at 1× and everything else at 10×."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        return [ParamGroup("backbone", backbone, 1.0), ParamGroup("head", head, 10.0)]

    # --- inference ------------------------------------------------------------------------------
    def infer_logits(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """CAM logits used for CAM generation, N × C × h × w (SEAM: the PCM output)."""
        raise NotImplementedError

    def normalise_cams(self, cams: torch.Tensor) -> torch.Tensor:
        """Per-class normalisation of the summed maps (K × H × W): divide by max + 1e-5 (IRN)."""
        return cams / (cams.flatten(1).max(dim=1).values[:, None, None] + 1e-5)

    def scale_maps(self, batch: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The class maps of one scale's batch (the image, and its flip), before the flip-back and the sum
        over scales: IRN's ReLU(CAM). A baseline with other inference maps overrides this."""
        return F.relu(self.infer_logits(batch, label).float())

    def map_stride(self, upsample: CamUpsample = "reference") -> int | None:
        """The stride each scale's maps are aligned to on the way to image size (None: straight to H x W)."""
        if upsample not in CAM_UPSAMPLE:
            raise ValueError(f"cams.upsample: {upsample!r} is not one of {', '.join(CAM_UPSAMPLE)}")
        if upsample == "direct" or self.cam_upsampling == "direct":
            return None
        return int(getattr(self.backbone, "output_stride", 16))

    @torch.no_grad()
    def summed_maps(self, inputs: ScaledInputs, labels: torch.Tensor, flip: bool, upsample: CamUpsample = "reference",
                    scale_maps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """N x K x H x W: per scale one forward of the images and (``flip``) their mirror images together,
        the mirrored maps flipped back and added, upsampled to image size (:meth:`map_stride`), summed over
        scales. ``scale_maps`` (default :meth:`scale_maps`) gives a forward's maps; ``labels`` is N x C."""
        scale_maps = scale_maps or self.scale_maps
        count, stride = labels.shape[0], self.map_stride(upsample)
        total = None
        for level in inputs.levels:
            batch = torch.cat([level, level.flip(-1)]) if flip else level
            maps = scale_maps(batch, labels.repeat(2, 1) if flip else labels).float()
            if flip:
                maps = maps[:count] + maps[count:].flip(-1)
            maps = upsample_maps(maps, inputs.size, stride)
            total = maps if total is None else total + maps
        return total

    @torch.no_grad()
    def batch_cams(self, inputs: ScaledInputs, labels: torch.Tensor, flip: bool,
                   upsample: CamUpsample = "reference") -> list[CamResult]:
        """IRN-style CAMs of a batch of same-size images (``labels`` N x C): :meth:`summed_maps` of
        :meth:`scale_maps`, ground-truth classes kept, each normalised (:meth:`normalise_cams`)."""
        total = self.summed_maps(inputs, labels, flip, upsample)
        results = []
        for maps, label in zip(total, labels):
            keys = torch.nonzero(label > 0.5).flatten().tolist()
            results.append(CamResult(keys, self.normalise_cams(maps[keys]) if keys else maps[:0]))
        return results

    @torch.no_grad()
    def multiscale_cams(self, image: torch.Tensor | ScaledInputs, label: torch.Tensor, scales: Sequence[float],
                        flip: bool, *, upsample: CamUpsample = "reference") -> CamResult:
        """CAMs of one image: ``image`` is its :func:`scaled_inputs` (the references' PIL bicubic inputs), or a
        normalised 1 x 3 x H x W tensor, whose scales are then resized bilinearly (the tensor path)."""
        return self.batch_cams(as_scaled_inputs(image, scales), label[None], flip, upsample)[0]


def as_scaled_inputs(image: torch.Tensor | ScaledInputs, scales: Sequence[float]) -> ScaledInputs:
    """One image's per-scale inputs: given as :class:`ScaledInputs`, or made from a normalised tensor
    (:func:`tensor_scaled_inputs`)."""
    if isinstance(image, ScaledInputs):
        if tuple(image.scales) != tuple(scales):
            raise ValueError(f"multiscale_cams: inputs made for scales {list(image.scales)}, asked for "
                             f"{list(scales)}")
        return image
    return tensor_scaled_inputs(image, scales)


def options_from_config(baseline_cls: type[Baseline], options: dict[str, Any], where: str) -> Any:
    from ..config import from_dict

    return from_dict(baseline_cls.Options, options, where)


def sites_to_regularise(output: TrainOutput) -> dict[str, CamSite]:
    return {name: site for name, site in output.sites.items() if site.regularise}


