"""Evaluation protocols: the references' scoring conventions as named presets.

The reference evaluators agree on the confusion matrix (summed over the split, ground truth 255 left
out) and disagree on four details, each of which moves published numbers:

==========  ==================  ===================  ==============  ==========================
protocol    predicted 255       class mean of IoU    denominators    boundary F, class with no
                                                                     boundary on either side
==========  ==================  ===================  ==============  ==========================
irn         background (0)      present classes      exact           left out (nanmean)
seam        wrong               all classes (0)      + 1e-10         P = R = F = 1, mean over C
hfpl        wrong               all classes (0)      + 1e-10         P = R = F = 1, mean over C
project     wrong or ignore     present classes      exact           left out (nanmean)
==========  ==================  ===================  ==============  ==========================

``irn``: IRN's ``step/eval_cam.py`` / ``eval_sem_seg.py`` and AMN's copies, scored with chainercv's
confusion (``calc_semantic_segmentation_confusion``) and ``np.nanmean`` of the IoUs: a class absent
from both ground truth and prediction (IoU 0/0) is left out of the mean; ``eval_sem_seg`` turns a
predicted 255 into background before scoring. ``seam`` / ``hfpl``: SEAM's ``evaluation.py`` and HFPL's
``eval_cam_voc.py`` (the same code): IoU = TP / (T + P - TP + 1e-10) for every class, so an absent class
counts 0 and the mean divides by all classes; a predicted 255 is in no class's P but in its pixel's T
(a wrong prediction). HFPL's ``contour_fscore.py`` gives a class with no boundary pixels in prediction and
ground truth P = R = F = 1 and divides the F sum by the number of foreground classes. SEAM has no boundary
metric; its preset uses HFPL's (HFPL's code extends SEAM's). IRN has none either; ``irn`` leaves a class
without boundaries out, the analogue of its nanmean. ``project``: the project's own, where a predicted 255
may also be left out (AMN's authors' advice for confident-only seeds).

Reference details not reproduced, none of which changes a reported number beyond float rounding: HFPL
accumulates boundary counts as float sums of count / 100000 (ratios then agree to ~1e-15; the project
keeps integers); HFPL's ``f_matches(g, p)`` receives ground truth and prediction swapped, so what it calls
precision is recall (F is symmetric and it prints only F; the project names them correctly); SEAM's
evaluator fails on an image with no CAM keys, HFPL's predicts it all background, as the project does.

Every protocol: ground truth 255 ignored for mIoU and background for boundary F (HFPL's choice); a pixel
is foreground at threshold t iff its max CAM > float32(t), the lowest class index winning ties.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import ConfigError

PRED_255_CHOICES = ("background", "wrong", "ignore")


@dataclass(frozen=True)
class Protocol:
    """Resolved scoring settings; ``describe()`` is what eval.json records under ``protocol``."""

    name: str
    reference: str
    pred_255: str  # "background": counted as a background prediction; "wrong": in no class; "ignore": left out
    class_mean: str  # "present": nanmean (0/0 classes left out); "all": every class, 0/0 counts 0
    iou_epsilon: float  # added to every IoU / precision / recall denominator (SEAM: 1e-10)
    boundary_empty_class: str  # "drop": left out of the means; "perfect": P = R = F = 1, means over C
    pred_255_options: tuple[str, ...]  # the pred_255 values this protocol allows

    def describe(self) -> dict:
        out = asdict(self)
        out.pop("pred_255_options")
        out["gt_255"] = "ignored for mIoU; background for boundary F"
        return out

    @property
    def label(self) -> str:
        """Short name for table headers: the protocol, plus pred_255 where the protocol lets it vary."""
        return self.name if len(self.pred_255_options) == 1 else f"{self.name}, pred 255 {self.pred_255}"


PROTOCOLS: dict[str, Protocol] = {
    "irn": Protocol("irn", "IRN/AMN eval_cam + eval_sem_seg with chainercv (nanmean IoU)", "background",
                    "present", 0.0, "drop", ("background",)),
    "seam": Protocol("seam", "SEAM evaluation.py (mean over all classes, +1e-10); boundary F as HFPL",
                     "wrong", "all", 1e-10, "perfect", ("wrong",)),
    "hfpl": Protocol("hfpl", "HFPL eval_cam_voc.py (= SEAM's) and contour_fscore.py", "wrong", "all", 1e-10,
                     "perfect", ("wrong",)),
    "project": Protocol("project", "wsss-sweep's own (nanmean IoU; predicted 255 wrong or ignored)", "wrong",
                        "present", 0.0, "drop", ("wrong", "ignore")),
}
# IRN/AMN and most CAM papers report chainercv numbers; nanmean keeps small splits meaningful.
DEFAULT_PROTOCOL = "irn"


def resolve_protocol(name: str | None = None, pred_255: str | None = None) -> Protocol:
    """The preset ``name`` (default ``irn``) with ``pred_255`` applied; one ConfigError for an unknown
    name, an unknown pred_255, or a pred_255 the protocol fixes otherwise."""
    name = DEFAULT_PROTOCOL if name is None else name
    if name not in PROTOCOLS:
        valid = "; ".join(f"{p.name!r} ({p.reference})" for p in PROTOCOLS.values())
        raise ConfigError(f"protocol: {name!r} is not valid; valid choices: {valid}")
    protocol = PROTOCOLS[name]
    if pred_255 is None:
        return protocol
    if pred_255 not in PRED_255_CHOICES:
        raise ConfigError(f"pred_255: {pred_255!r} is not valid; valid choices: "
                          f"{', '.join(map(repr, PRED_255_CHOICES))}")
    if pred_255 not in protocol.pred_255_options:
        others = [p.name for p in PROTOCOLS.values() if pred_255 in p.pred_255_options]
        raise ConfigError(f"pred_255: {pred_255!r} conflicts with protocol {name!r}, which scores a predicted 255 "
                          f"as {protocol.pred_255!r} ({protocol.reference}); leave pred_255 unset, or use protocol "
                          f"{' or '.join(map(repr, others))}")
    return replace(protocol, pred_255=pred_255)
