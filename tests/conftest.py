"""Suite-wide settings: the decoded ground-truth cache lives in a temporary folder for the whole session
(never the user's ~/.cache), and every process the tests start inherits it."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def ground_truth_cache_in_a_temp_folder(tmp_path_factory):
    previous = os.environ.get("WSSS_GT_CACHE")
    os.environ["WSSS_GT_CACHE"] = str(tmp_path_factory.mktemp("gt-cache"))
    yield
    if previous is None:
        os.environ.pop("WSSS_GT_CACHE", None)
    else:
        os.environ["WSSS_GT_CACHE"] = previous
