"""Reconstruction-free anomaly detection by DDIM inversion (Sakai & Hasegawa, seed 002).

A diffusion model is trained on frozen EfficientNet-B4 features; a test image's features are
mapped to the latent ``x_T`` by S-step DDIM inversion and scored by their typicality under
``N(0, I)``. Paper defaults: ``config/methods/inversion.yaml``.
"""

from anodiff.methods.base import MethodEntry
from anodiff.methods.inversion.config import InversionConfig
from anodiff.methods.inversion.method import InversionDetector, build, feature_spec

ENTRY = MethodEntry(
    key="inversion",
    config_class=InversionConfig,
    feature_spec=feature_spec,
    build=build,
    paper="002_6c3da90b684e239d.txt (Sakai & Hasegawa)",
    nfe=lambda config: config.inference.num_inversion_steps,  # Table 1: one UNet call per step
    inference_keys=("inference",),  # Tables 3-4: inversion steps and scores
)

__all__ = ["ENTRY", "InversionConfig", "InversionDetector"]
