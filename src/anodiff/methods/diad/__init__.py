"""DiAD: He et al., "A Diffusion-based Framework for Multi-class Anomaly Detection", AAAI-24 (seed 001).

Stable Diffusion's KL autoencoder (fine-tuned on the training images in a ``pretrain`` job)
and frozen UNet, guided by a trainable Semantic-Guided network (a ControlNet-style copy of
SD's encoder with an SFF block); anomaly maps compare ResNet50 features of input and
reconstruction. One model for all categories (unified). The variants ``ldm`` and ``ddpm`` are
the paper's LDM and DDPM baselines. Paper defaults: ``config/methods/diad.yaml``. The
detector and the pretrain stage are in :mod:`anodiff.methods.diad.method`.
"""

from anodiff.methods.diad.config import DiADConfig
from anodiff.methods.spec import FeatureSpec, MethodEntry
from anodiff.weights import PretrainedWeights


def feature_spec(config: DiADConfig) -> FeatureSpec:
    """DiAD runs its own networks on the resized images."""
    return FeatureSpec.pixels(config.image_size)


def pretrained_weights(config: DiADConfig) -> tuple[PretrainedWeights, ...]:
    """SD's autoencoder and UNet (not for ``ddpm``) and the anomaly-map backbone."""
    p = config.pretrained
    found = [p.weights(p.vae_subfolder), p.weights(p.unet_subfolder)] if config.latent else []
    m = config.anomaly_map
    if m.pretrained:
        found.append(PretrainedWeights("timm", m.backbone, allow_random_weights=m.allow_random_weights))
    return tuple(found)


def nfe(config: DiADConfig) -> int:
    """Denoiser evaluations per image: the DDIM steps at or below T' - 1 (10 by default)."""
    # diffusers' DDIMScheduler "leading" grid k * (T // S) + steps_offset (k < S), written out so
    # that planning the workflow needs no diffusers (tests/test_diad.py compares the two)
    d, i = config.diffusion, config.inference
    stride = d.num_train_timesteps // i.ddim_steps
    return sum(k * stride + d.steps_offset < i.forward_timesteps for k in range(i.ddim_steps))


ENTRY = MethodEntry(
    key="diad",
    config_class=DiADConfig,
    paper="001_ea009f0dc08b1002.txt (He et al., AAAI-24)",
    feature_spec=feature_spec,
    pretrained_weights=pretrained_weights,
    nfe=nfe,  # one SD + SG evaluation per DDIM step
    inference_keys=("inference", "anomaly_map"),  # Table 6 map backbones, Fig. 6 forward timesteps
    pretrain_keys=("variant", "image_size", "pretrained", "autoencoder_finetune"),  # what pretrain() reads
    implementation="anodiff.methods.diad.method",
)

__all__ = ["ENTRY", "DiADConfig"]
