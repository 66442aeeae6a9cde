"""DPDiff-AD: dual prototype-conditioned diffusion for multi-class anomaly detection (seed 004).

Frozen DINOv2 tokens (layer-averaged, Eq. 9) are summarised by learnable local and global
prototypes (Eq. 10-13); a prototype-aware DiT learns to denoise the tokens conditioned on the
noisy prototypes (Eq. 14-19); test tokens are perturbed, denoised in a few DDIM steps and
scored by their reconstruction error (Eq. 20-24). Paper defaults: ``config/methods/dpdiff.yaml``.
"""

from anodiff.methods.base import MethodEntry
from anodiff.methods.dpdiff.config import DPDiffConfig
from anodiff.methods.dpdiff.method import DPDiffDetector, build, feature_spec, nfe

ENTRY = MethodEntry(
    key="dpdiff",
    config_class=DPDiffConfig,
    feature_spec=feature_spec,
    build=build,
    paper="004_482bdb48a2a5445d.txt (DPDiff-AD)",
    nfe=nfe,
    inference_keys=("inference",),  # Fig. 6: inference timestep and DDIM steps
)

__all__ = ["ENTRY", "DPDiffConfig", "DPDiffDetector"]
