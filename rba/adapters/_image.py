"""Image preprocessing shared by the image adapters (timm ViTs and CNNs, torchvision, EfficientNet-Lite)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rba.errors import ModelError

__all__ = ["ImagePreprocess"]


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
        import timm.data  # lazy: timm, for timm models only

        data_cfg = timm.data.resolve_data_config({}, model=model)
        size = image_size or data_cfg["input_size"][-1]
        mean, std, channels = data_cfg["mean"], data_cfg["std"], data_cfg["input_size"][0]
        built = _input_channels(model)
        if built is not None and built != channels:  # built with in_chans (e.g. 1 for grayscale): the
            # pretrained config still names 3 channels, so average its per-channel mean and std
            channels = built
            mean, std = [sum(mean) / len(mean)] * built, [sum(std) / len(std)] * built
        return cls(size, mean, std, channels=channels)

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


def _input_channels(model: torch.nn.Module) -> int | None:
    """The channel count of a timm model's first convolution (``pretrained_cfg["first_conv"]``), if it has one."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    try:
        conv = model.get_submodule(name) if isinstance(name, str) and name else None
    except AttributeError:  # a config naming a module this build lacks
        return None
    return getattr(conv, "in_channels", None)
