"""D3AD: "Dynamic Denoising Diffusion Probabilistic Model for Anomaly Detection" (seed 003).

An unconditional latent UNet on Stable Diffusion's frozen KL autoencoder reconstructs each
test image from its noiselessly scaled latent (Algorithm 1) with DDAD guidance and 10 DDIM
steps, starting at a step T_hat chosen per image from the mean KNN distance of its ResNet-34
features to the training set (dynamic implicit conditioning, Algorithm 2). The anomaly map
fuses the latent L1 distance with the cosine distance of domain-adapted ResNet-34 features
(Eq. 9-10). One model per category (per-class). Paper defaults: ``config/methods/d3ad.yaml``.
The detector is in :mod:`anodiff.methods.d3ad.method`.
"""

from anodiff.methods.d3ad.config import D3ADConfig
from anodiff.methods.spec import FeatureSpec, MethodEntry
from anodiff.weights import PretrainedWeights


def feature_spec(config: D3ADConfig) -> FeatureSpec:
    """D3AD runs its own networks on the resized images."""
    return FeatureSpec.pixels(config.image_size)


def pretrained_weights(config: D3ADConfig) -> tuple[PretrainedWeights, ...]:
    """The KL autoencoder and the ImageNet ResNet-34."""
    f = config.feature_extractor
    extractor = PretrainedWeights("timm", f.name, allow_random_weights=f.allow_random_weights)
    vae = config.pretrained.weights()
    return (vae, extractor) if f.pretrained else (vae,)


def nfe(config: D3ADConfig) -> int:
    """UNet evaluations per image: S DDIM steps, whatever T_hat (Sec. 5: 10)."""
    return config.reconstruction.num_ddim_steps


def reads_test_set(config: D3ADConfig) -> tuple[str, ...]:
    """The paper-protocol shortcut: l_map and f_map min-max normalised over the test set (official code)."""
    if config.anomaly_map.normalization == "test":
        return ("test-set min-max normalisation of l_map and f_map (official code)",)
    return ()


ENTRY = MethodEntry(
    key="d3ad",
    config_class=D3ADConfig,
    paper="003_10d77643e6581ff2.txt (D3AD)",
    feature_spec=feature_spec,
    pretrained_weights=pretrained_weights,
    nfe=nfe,
    inference_keys=("anomaly_map",),  # map fusion only: bins, adapted extractor and map ranges use the rest
    reads_test_set=reads_test_set,
    implementation="anodiff.methods.d3ad.method",
)

__all__ = ["ENTRY", "D3ADConfig"]
