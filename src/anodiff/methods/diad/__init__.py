"""DiAD: He et al., "A Diffusion-based Framework for Multi-class Anomaly Detection", AAAI-24 (seed 001).

Stable Diffusion's KL autoencoder (fine-tuned on the training images in a ``pretrain`` job
with the LDM autoencoder objective: L1 + LPIPS + KL, and a patch discriminator late in
training) and frozen UNet, guided by a trainable Semantic-Guided network (a ControlNet-style
copy of SD's encoder with an SFF block), with the CLIP embedding of the empty prompt as
cross-attention context; anomaly maps compare ResNet50 features of input and reconstruction.
One model for all categories (unified). The variant ``sd`` is SD alone (Table 5), ``ldm`` and
``ddpm`` are the paper's LDM and DDPM baselines. Paper defaults: ``config/methods/diad.yaml``.
The detector and the pretrain stage are in :mod:`anodiff.methods.diad.method`.
"""

from anodiff.methods.diad.config import DiADConfig, inference_timesteps
from anodiff.methods.spec import FeatureSpec, MethodEntry
from anodiff.weights import PretrainedWeights


def feature_spec(config: DiADConfig) -> FeatureSpec:
    """DiAD runs its own networks on the resized images."""
    return FeatureSpec.pixels(config.image_size)


def pretrained_weights(config: DiADConfig) -> tuple[PretrainedWeights, ...]:
    """What the variant and its pretrain job load: SD's autoencoder (fine-tuned by the pretrain
    job, which every variant has, ``ddpm`` included: it shares diad's by hash) and UNet, the CLIP
    text encoder and tokenizer (``diad``, ``sd``), LPIPS' VGG16 (pretrain) and the anomaly-map
    backbone."""
    p, c, f = config.pretrained, config.context, config.autoencoder_finetune
    found = []
    if config.latent or f.epochs > 0:
        found.append(p.weights(p.vae_subfolder))
    if config.latent:
        found.append(p.weights(p.unet_subfolder))
    if config.prompt_context:
        found += [p.weights(c.text_encoder_subfolder), p.weights(c.tokenizer_subfolder)]
    if f.epochs > 0 and f.perceptual_weight > 0:
        found.append(PretrainedWeights("timm", f.perceptual_backbone, allow_random_weights=p.allow_random_weights))
    m = config.anomaly_map
    if m.pretrained:
        found.append(PretrainedWeights("timm", m.backbone, allow_random_weights=m.allow_random_weights))
    return tuple(found)


def nfe(config: DiADConfig) -> int:
    """Denoiser evaluations per image: the S DDIM steps below T' (10 by default)."""
    i = config.inference
    return len(inference_timesteps(i.forward_timesteps, i.ddim_steps, i.timestep_spacing,
                                   config.diffusion.steps_offset)[1])


ENTRY = MethodEntry(
    key="diad",
    config_class=DiADConfig,
    paper="001_ea009f0dc08b1002.txt (He et al., AAAI-24)",
    feature_spec=feature_spec,
    pretrained_weights=pretrained_weights,
    nfe=nfe,  # one SD + SG evaluation per DDIM step
    inference_keys=("inference", "anomaly_map"),  # Table 6 map backbones, Fig. 6 forward timesteps
    # what pretrain() reads: not the variant, so every variant shares one fine-tune per dataset
    pretrain_keys=("image_size", "pretrained", "autoencoder_finetune"),
    checkpoint_epoch=lambda config: config.inference.checkpoint_epoch,  # paper protocol: best TEST AUROC
    snapshot_key="trainable",  # a snapshot holds the trained parts (SG network, SD decoder)
    implementation="anodiff.methods.diad.method",
)

__all__ = ["ENTRY", "DiADConfig"]
