"""Evaluation stage: CAM store, every background threshold in one pass, contour F-score, dense-CRF
pseudo-labels and importers of reference CAM files.

Entry points: :func:`evaluate_cams`, :func:`evaluate_label_dir`, :func:`write_eval_outputs`,
:func:`refine_cams` (``wsss eval`` / ``wsss refine``).
"""

from .cam_store import CamRecord, CamStore
from .evaluate import evaluate_cams, evaluate_label_dir
from .report import format_table, write_eval_outputs

__all__ = ["CamRecord", "CamStore", "evaluate_cams", "evaluate_label_dir", "format_table", "write_eval_outputs",
           "refine_cams", "RefineConfig", "crf_confident_labels", "crf_probability_labels", "import_cams"]


def __getattr__(name):
    # CRF and importers load pydensecrf/pickled files lazily: evaluation alone needs neither.
    if name in ("refine_cams", "RefineConfig", "crf_confident_labels", "crf_probability_labels"):
        from . import crf
        return getattr(crf, name)
    if name == "import_cams":
        from .importers import import_cams
        return import_cams
    raise AttributeError(name)
