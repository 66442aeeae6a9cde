"""DiAD: He et al., "A Diffusion-based Framework for Multi-class Anomaly Detection", AAAI-24 (seed 001).

Stable Diffusion's KL autoencoder (fine-tuned on the training images in a ``pretrain`` job)
and frozen UNet, guided by a trainable Semantic-Guided network (a ControlNet-style copy of
SD's encoder with an SFF block); anomaly maps compare ResNet50 features of input and
reconstruction. One model for all categories (unified). The variants ``ldm`` and ``ddpm`` are
the paper's LDM and DDPM baselines. Paper defaults: ``config/methods/diad.yaml``.
"""

from anodiff.methods.base import MethodEntry
from anodiff.methods.diad.config import DiADConfig
from anodiff.methods.diad.method import DiADDetector, build, feature_spec, nfe, pretrain, pretrained_weights

ENTRY = MethodEntry(
    key="diad",
    config_class=DiADConfig,
    feature_spec=feature_spec,
    build=build,
    paper="001_ea009f0dc08b1002.txt (He et al., AAAI-24)",
    nfe=nfe,  # one SD + SG evaluation per DDIM step
    pretrained_weights=pretrained_weights,
    pretrain=pretrain,
    inference_keys=("inference", "anomaly_map"),  # Table 6 map backbones, Fig. 6 forward timesteps
)

__all__ = ["ENTRY", "DiADConfig", "DiADDetector"]
