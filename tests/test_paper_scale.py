"""Paper-scale smoke test (issue 15): the two smallest paper architectures at paper size, on the CPU."""

import importlib.util
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_paper_scale", REPO / "benchmarks" / "bench_paper_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_two_smallest_paper_architectures_train_a_step_and_predict():
    bench = _bench()
    rows = bench.paper_rows(["config/datasets.yaml", "config/paper.yaml"])
    assert len(rows) >= 40 and {r.method for r in rows} == {"inversion", "patchcore", "diad", "d3ad", "dpdiff"}
    smallest = sorted(rows, key=bench.meta_params)[:2]
    for row in smallest:
        result = bench.measure(asdict(row), train=True)  # one optimiser step, one predict, two images
        assert result["train"] == "ok" and result["predict"] == "ok", (row.method, row.variant, result)
        assert result["predict_seconds"] > 0 and result["peak_rss_gb"] < 24
        if result["params"]:  # a memory bank (PatchCore) has no parameters of its own
            assert result["params"] == bench.meta_params(row)


def test_a_predict_only_row_loads_the_random_weights_with_the_class_names_fit_would_set():
    bench = _bench()

    class Detector:  # DiAD's LDM baseline: no classes before fit
        def state_dict(self):
            return {"trainable": {"w": 1}, "classes": None}

    assert bench.untrained_state(Detector(), ["bottle", "cable"], 2) == {
        "trainable": {"w": 1}, "classes": ["bottle", "cable"]}
    assert bench.untrained_state(Detector(), ["bottle"], 1)["classes"] is None  # not class-conditional


def test_the_memory_guard_reads_a_process_trees_resident_memory():
    import os

    bench = _bench()
    assert 0.01 < bench._rss_gb(os.getpid()) < 24
    assert bench._rss_gb(2**22 + 12345) == 0  # gone
