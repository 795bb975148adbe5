"""Evaluation stage: CAM store, every background threshold in one pass, contour F-score, dense-CRF
pseudo-labels and importers of reference CAM files.

Entry points: :func:`evaluate_cams`, :func:`evaluate_label_dir`, :func:`write_eval_outputs`,
:func:`refine_cams` (``wsss eval`` / ``wsss refine``).
"""

from ..lazy import lazy_exports

# Loaded on first use: `wsss --help` imports this package (through wsss_core.evaluation.cli) but needs none
# of numpy, scipy or pydensecrf.
__getattr__ = lazy_exports(globals(), {
    "CamRecord": ".cam_store", "CamStore": ".cam_store",
    "evaluate_cams": ".evaluate", "evaluate_label_dir": ".evaluate",
    "format_table": ".report", "write_eval_outputs": ".report",
    "refine_cams": ".crf", "RefineConfig": ".crf", "crf_confident_labels": ".crf", "crf_probability_labels": ".crf",
    "import_cams": ".importers",
})

__all__ = ["CamRecord", "CamStore", "evaluate_cams", "evaluate_label_dir", "format_table", "write_eval_outputs",
           "refine_cams", "RefineConfig", "crf_confident_labels", "crf_probability_labels", "import_cams"]
