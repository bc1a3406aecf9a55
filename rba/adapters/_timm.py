"""timm models: vision transformers (ViT / DeiT / DINOv2-style, ``model.blocks``) and, through the CNN
adapter, ResNets. Weights come from a local file (``model.weights``) or random init (``pretrained = false``);
nothing is fetched from a hub."""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rba.adapters._base import Adapter, Context
from rba.adapters._weights import file_digest, load_into, load_weights, weights_path
from rba.errors import ModelError, did_you_mean

__all__ = ["TimmViT", "build_timm", "create_timm_model", "ImagePreprocess"]


class ImagePreprocess:
    """uint8 N×C×H×W → float, channel-matched, resized and normalised as the model expects."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3,
                 scale: float = 1 / 255.0):
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.channels = channels
        self.scale = scale

    @classmethod
    def for_timm(cls, model: torch.nn.Module, image_size: int | None = None) -> "ImagePreprocess":
        """The model's own timm preprocessing (mean, std, channels; default input size)."""
        import timm.data

        data_cfg = timm.data.resolve_data_config({}, model=model)
        size = image_size or data_cfg["input_size"][-1]
        return cls(size, data_cfg["mean"], data_cfg["std"], channels=data_cfg["input_size"][0])

    def __call__(self, samples: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(samples)).float() * self.scale
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != self.channels:
            raise ModelError(f"images have {x.shape[1]} channels; the model expects {self.channels}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return ((x - self.mean) / self.std).contiguous()


def create_timm_model(cfg, **extra) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build a timm model by name, load ``model.weights`` safely, return (model, identity)."""
    import timm

    m = cfg.model
    if not timm.is_model(m.name):
        hint = did_you_mean(m.name, timm.list_models(), n=3)
        raise ModelError(f"unknown timm model {m.name!r}.{hint} (`python -c \"import timm; print(timm.list_models('vit*'))\"` lists them)")
    weights = weights_path(cfg, f"model {m.name!r}")
    kwargs = dict(m.options) | extra
    seed = int(kwargs.pop("seed", 0))
    try:
        with torch.random.fork_rng():
            # random init is seeded so that the same config gives the same model (and cache key)
            torch.manual_seed(seed)
            model = timm.create_model(m.name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise ModelError(f"timm could not build {m.name!r} with options {kwargs}: {exc}") from None
    identity: dict[str, Any] = {"kind": m.kind, "name": m.name, "options": kwargs, "seed": seed}
    if weights is not None and m.pretrained:
        state = load_weights(weights)
        filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                state = filter_fn(state, model)
            except Exception:
                pass  # the strict load below reports the mismatch
        load_into(model, state, str(weights))
        identity["weights"] = file_digest(weights)
    else:
        identity["weights"] = "random"
    return model.eval(), identity


class TimmViT(Adapter):
    """timm ``VisionTransformer`` (and subclasses: DeiT, DINOv2-style with register tokens).

    Vectors are every token (CLS and register tokens included); all samples have the same token count.
    """

    layout = "tokens"

    def __init__(self, model, identity, image_size: int | None = None):
        super().__init__(model, model.blocks, identity=identity)
        self.preprocess = ImagePreprocess.for_timm(model, image_size)

    def collate(self, samples):
        return self.preprocess(samples)

    def embed(self, inputs):
        m = self.model
        x = m.patch_embed(inputs.to(self.device))
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        return x, Context()

    def pool(self, h, ctx):
        return self.model.forward_head(self.model.norm(h), pre_logits=True)

    def logits(self, pooled):
        return self.model.head(pooled)

    def forward(self, inputs):
        m = self.model
        return m.forward_head(m.forward_features(inputs.to(self.device)), pre_logits=True)

    def example_inputs(self):
        s = self.preprocess.image_size
        return torch.zeros(1, self.preprocess.channels, s, s, device=self.device)


def build_timm(cfg) -> Adapter:
    """``[model] kind = "timm"``: a ViT-family model (``model.blocks``) or a CNN (ResNet-style stages)."""
    image_size = cfg.data.image_size
    extra = {}
    if image_size is not None:
        extra["img_size"] = image_size
    try:
        model, identity = create_timm_model(cfg, **extra)
    except ModelError as exc:
        if "img_size" in extra and "could not build" in str(exc):  # CNNs take any input size
            model, identity = create_timm_model(cfg)
        else:
            raise
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        return TimmViT(model, identity, image_size=image_size)
    from rba.adapters._cnn import TimmCNN

    return TimmCNN(model, identity, image_size=image_size)
