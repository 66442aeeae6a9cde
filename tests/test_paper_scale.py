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
