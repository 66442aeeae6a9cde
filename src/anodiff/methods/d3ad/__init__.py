"""D3AD: "Dynamic Denoising Diffusion Probabilistic Model for Anomaly Detection" (seed 003).

An unconditional latent UNet on Stable Diffusion's frozen KL autoencoder reconstructs each
test image from its noiselessly scaled latent (Algorithm 1) with DDAD guidance and 10 DDIM
steps, starting at a step T_hat chosen per image from the mean KNN distance of its ResNet-34
features to the training set (dynamic implicit conditioning, Algorithm 2). The anomaly map
fuses the latent L1 distance with the cosine distance of domain-adapted ResNet-34 features
(Eq. 9-10). One model per category (per-class). Paper defaults: ``config/methods/d3ad.yaml``.
"""

from anodiff.methods.base import MethodEntry
from anodiff.methods.d3ad.config import D3ADConfig
from anodiff.methods.d3ad.method import D3ADDetector, build, feature_spec, nfe, pretrained_weights

ENTRY = MethodEntry(
    key="d3ad",
    config_class=D3ADConfig,
    feature_spec=feature_spec,
    build=build,
    paper="003_10d77643e6581ff2.txt (D3AD)",
    nfe=nfe,  # one UNet evaluation per DDIM step
    pretrained_weights=pretrained_weights,
    inference_keys=("anomaly_map",),  # map fusion only: bins, adapted extractor and map ranges use the rest
)

__all__ = ["ENTRY", "D3ADConfig", "D3ADDetector"]
