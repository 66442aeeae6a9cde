"""PatchCore: Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

A peer baseline: locally aware patch features of a frozen ImageNet WideResNet-50 (layers 2
and 3) form a memory bank, subsampled by greedy coreset selection; test patches are scored
by their nearest-neighbour distance to it. Defaults: ``config/methods/patchcore.yaml``.
"""

from anodiff.methods.base import MethodEntry
from anodiff.methods.patchcore.config import PatchCoreConfig
from anodiff.methods.patchcore.method import PatchCoreDetector, build, feature_spec

ENTRY = MethodEntry(
    key="patchcore",
    config_class=PatchCoreConfig,
    feature_spec=feature_spec,
    build=build,
    paper="Roth et al., CVPR 2022 (peer baseline)",
    # the same memory bank, scored differently
    inference_keys=("num_neighbors", "image_score", "anomaly_map_sigma", "query_chunk_size",
                    "bank_chunk_size"),
)

__all__ = ["ENTRY", "PatchCoreConfig", "PatchCoreDetector"]
