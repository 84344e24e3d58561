"""The examples in the science modules' docstrings run and give what they say."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

MODULES = [
    "labpipe.api.conditional",
    "labpipe.api_token",
    "labpipe.bench.fit",
    "labpipe.classify.calibration",
    "labpipe.classify.count_correction",
    "labpipe.classify.gate_from_plates",
    "labpipe.classify.imagenet_family",
    "labpipe.classify.ood",
    "labpipe.classify.rejection",
    "labpipe.classify.trained",
    "labpipe.classify.training",
    "labpipe.crops.padding",
    "labpipe.daemon.service",
    "labpipe.detect.classical",
    "labpipe.detect.extent",
    "labpipe.detect.significance",
    "labpipe.detect.detr",
    "labpipe.detect.detr_data",
    "labpipe.detect.finetune",
    "labpipe.evaluation.detector",
    "labpipe.evaluation.truth",
    "labpipe.families",
    "labpipe.imaging.tilecache",
    "labpipe.ingest.moves",
    "labpipe.metrics.detection",
    "labpipe.queries.listings",
    "labpipe.queries.records",
    "labpipe.queries.rule",
    "labpipe.reports.counts",
    "labpipe.web.charts",
    "labpipe.web.geometry",
    "labpipe.web.render",
    "labpipe.web.routes.common",
    "labpipe.web.routes.exports",
    "labpipe.web.routes.review",
    "labpipe.web.wording",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS)
    assert attempted > 0, f"{name} has no examples"
    assert failed == 0, name
