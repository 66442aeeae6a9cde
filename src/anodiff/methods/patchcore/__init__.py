"""PatchCore: Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

A peer baseline: locally aware patch features of a frozen ImageNet WideResNet-50 (layers 2
and 3) form a memory bank, subsampled by greedy coreset selection; test patches are scored
by their nearest-neighbour distance to it. Defaults: ``config/methods/patchcore.yaml``. The
detector is in :mod:`anodiff.methods.patchcore.method`.
"""

from anodiff.methods.patchcore.config import PatchCoreConfig
from anodiff.methods.spec import FeatureSpec, MethodEntry


def feature_spec(config: PatchCoreConfig) -> FeatureSpec:
    """The cached features: the configured stages resized to ``feature_size`` (Sec. 3.1)."""
    return config.backbone.feature_spec()


ENTRY = MethodEntry(
    key="patchcore",
    config_class=PatchCoreConfig,
    paper="Roth et al., CVPR 2022 (peer baseline)",
    feature_spec=feature_spec,
    # the same memory bank, scored differently
    inference_keys=("num_neighbors", "image_score", "anomaly_map_sigma", "query_chunk_size",
                    "bank_chunk_size"),
    implementation="anodiff.methods.patchcore.method",
)

__all__ = ["ENTRY", "PatchCoreConfig"]
