"""One evaluation protocol for every method: one grid, one mask rule, whatever the map size."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anodiff.data import mvtec
from anodiff.evaluation import EvaluationProtocol, evaluate_predictions, read_masks, resize_maps, resize_mask
from anodiff.pipeline import JobEnvironment, evaluate, prepare_dataset

PROTOCOL = EvaluationProtocol(resolution=16, mask_area_threshold=0.5, aupro_fpr_limit=0.3)


def test_a_mask_pixel_is_anomalous_when_half_its_area_is():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True  # a quarter of the top-left 2x2 block
    mask[2:4, 2:4] = True  # all of the bottom-right block
    mask[0, 2:4] = True  # half of the top-right block
    assert resize_mask(mask, 2, 0.5).tolist() == [[False, True], [False, True]]
    assert resize_mask(mask, 2, 0.75).tolist() == [[False, False], [False, True]]
    assert resize_mask(mask, 4, 0.5) is mask or np.array_equal(resize_mask(mask, 4, 0.5), mask)


def test_maps_are_resized_bilinearly_and_a_constant_stays_constant():
    maps = np.full((2, 7, 7), 3.0, dtype=np.float32)
    assert np.allclose(resize_maps(maps, 16), 3.0) and resize_maps(maps, 16).shape == (2, 16, 16)
    ramp = np.tile(np.arange(8, dtype=np.float32), (1, 8, 1))  # increases left to right
    assert (np.diff(resize_maps(ramp, 16)[0], axis=1) >= 0).all()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    config = {"source": "synthetic", "root": str(root / "synthetic"), "categories": ["washer"],
              "synthetic": {"image_size": 64, "n_train": 2, "n_test_good": 3, "n_test_per_defect": 2, "seed": 0}}
    report = root / "validation.json"
    prepare_dataset(dataset="synthetic", dataset_config=config, report_path=report)
    return report, mvtec.list_samples(root / "synthetic", "washer", "test")


def test_two_methods_with_different_map_sizes_are_scored_on_the_same_masks(dataset, tmp_path):
    # the same (perfect) maps, given at 64 px by one method and at 32 px by another
    report, samples = dataset
    full = np.stack([mvtec.read_mask(s.mask_path, 64, None) for s in samples]).astype(np.float32)
    small = full.reshape(len(samples), 32, 2, 32, 2).mean(axis=(2, 4))
    labels = np.array([s.label for s in samples])
    masks = read_masks(samples, PROTOCOL)
    assert masks.shape == (len(samples), 16, 16) and masks[labels == 1].any()
    results = {}
    for name, maps in (("at64", full), ("at32", small)):
        predictions = tmp_path / f"{name}.npz"
        np.savez(predictions, image_score=labels + 0.1 * np.arange(len(labels)), anomaly_map=maps, labels=labels,
                 image_paths=np.array([str(s.image_path) for s in samples]),
                 defect_types=np.array([s.defect_type for s in samples]), seconds_per_image=np.array(0.1))
        output = tmp_path / f"{name}.parquet"
        env = JobEnvironment.from_config({"device": "cpu", "weights_dir": "w", "experiment": "e", "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": str(tmp_path / "artifacts")}})
        evaluate(predictions=predictions, report=report, category="washer", output=output,
                 run_info=_run_info(tmp_path, env), run={"dataset": "synthetic", "method": name, "variant": "v"},
                 env=env, evaluation={"resolution": 16, "mask_area_threshold": 0.5, "aupro_fpr_limit": 0.3})
        results[name] = pd.read_parquet(output).iloc[0]
    for row, size in ((results["at64"], 64), (results["at32"], 32)):
        assert not row.pretrained_weights and row.random_weights == "a_backbone"  # as the run info records
        assert row.eval_resolution == 16 and row.map_size == size and "16 px" in row.evaluation
    # maps that are the masks themselves score perfectly on the evaluation grid, at either size
    assert results["at64"].pixel_auroc == pytest.approx(1.0) and results["at32"].pixel_auroc == pytest.approx(1.0)
    direct = evaluate_predictions(labels, labels.astype(float), small, read_masks(samples, PROTOCOL), PROTOCOL)
    assert direct["pixel_auroc"] == pytest.approx(results["at32"].pixel_auroc)


def _run_info(tmp_path: Path, env: JobEnvironment) -> Path:
    from anodiff.tracking import Tracker, write_run_info

    path = tmp_path / "run.json"
    if not path.exists():
        tracker = Tracker(env.tracking)
        write_run_info(path, tracker.start_run("parent", {}), env.tracking, pretrained_weights=False,
                       random_weights="a_backbone")
    return path
