"""Reconstruction-free anomaly detection by DDIM inversion (Sakai & Hasegawa, seed 002).

A diffusion model is trained on frozen EfficientNet-B4 features; a test image's features are
mapped to the latent ``x_T`` by S-step DDIM inversion and scored by their typicality under
``N(0, I)``. Paper defaults: ``config/methods/inversion.yaml``. The detector is in
:mod:`anodiff.methods.inversion.method`.
"""

from anodiff.methods.inversion.config import InversionConfig
from anodiff.methods.spec import FeatureSpec, MethodEntry


def feature_spec(config: InversionConfig) -> FeatureSpec:
    """The cached features: the configured timm stages resized to ``feature_size`` (Sec. 4.3)."""
    return config.backbone.feature_spec()


def nfe(config: InversionConfig) -> int:
    """UNet evaluations per image: one per inversion step (Table 1)."""
    return config.inference.num_inversion_steps


def reads_test_set(config: InversionConfig) -> tuple[str, ...]:
    """The paper-protocol shortcut: Normalize over the test set (official src/evaluate.py)."""
    if config.inference.normalization == "test":
        return ("test-set min-max normalisation of the NLL and spatial-norm scores (official src/evaluate.py)",)
    return ()


ENTRY = MethodEntry(
    key="inversion",
    config_class=InversionConfig,
    paper="002_6c3da90b684e239d.txt (Sakai & Hasegawa)",
    feature_spec=feature_spec,
    nfe=nfe,
    inference_keys=("inference",),  # Tables 3-4: inversion steps and scores
    calibrates=True,  # the combined score's Normalize uses the training score range (Algorithm 1)
    reads_test_set=reads_test_set,  # paper protocol: Normalize over the test set (official src/evaluate.py)
    checkpoint_epoch=lambda config: config.inference.checkpoint_epoch,  # paper protocol: best TEST checkpoint
    snapshot_key="unet",  # a snapshot holds the EMA weights, the scoring UNet
    implementation="anodiff.methods.inversion.method",
)

__all__ = ["ENTRY", "InversionConfig"]
