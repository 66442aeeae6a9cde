"""DPDiff-AD: dual prototype-conditioned diffusion for multi-class anomaly detection (seed 004).

Frozen DINOv2 tokens (layer-averaged, Eq. 9) are summarised by learnable local and global
prototypes (Eq. 10-13); a prototype-aware DiT learns to denoise the tokens conditioned on the
noisy prototypes (Eq. 14-19); test tokens are perturbed, denoised in a few DDIM steps and
scored by their reconstruction error (Eq. 20-24). Paper defaults: ``config/methods/dpdiff.yaml``.
The detector is in :mod:`anodiff.methods.dpdiff.method`.
"""

from anodiff.methods.dpdiff.config import DPDiffConfig
from anodiff.methods.spec import FeatureSpec, MethodEntry


def feature_spec(config: DPDiffConfig) -> FeatureSpec:
    """The cached features: the configured blocks' tokens, averaged over layers (Eq. 9)."""
    return config.backbone.feature_spec()


def nfe(config: DPDiffConfig) -> int:
    """Denoiser calls per image: one per DDIM step; none for the prototype-only scores."""
    return config.inference.num_ddim_steps if config.inference.score == "reconstruction" else 0


ENTRY = MethodEntry(
    key="dpdiff",
    config_class=DPDiffConfig,
    paper="004_482bdb48a2a5445d.txt (DPDiff-AD)",
    feature_spec=feature_spec,
    nfe=nfe,
    inference_keys=("inference",),  # Fig. 6: inference timestep and DDIM steps; Table 5 scores
    implementation="anodiff.methods.dpdiff.method",
)

__all__ = ["ENTRY", "DPDiffConfig"]
