"""timm models: vision transformers (ViT / DeiT / DINOv2-style, ``model.blocks``) and, through the CNN
adapter, ResNets. Weights come from a local file (``model.weights``) or random init (``pretrained = false``);
nothing is fetched from a hub. A folder in timm's own format (``config.json`` with ``architecture`` and
``model_args``, and ``model.safetensors``: what a folded export writes) loads by its path as ``model.name``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import timm
import torch
from timm.models import save_for_hf
from timm.models.vision_transformer import Block
from torch import nn

from rba.adapters._base import Adapter, Context
from rba.adapters._builder import build_model, load_pretrained
from rba.adapters._cnn import TimmCNN
from rba.adapters._image import ImagePreprocess
from rba.adapters._weights import weights_path
from rba.errors import ModelError, did_you_mean

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

__all__ = ["TimmViT", "build_timm", "create_timm_model"]


def create_timm_model(cfg, **extra) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build a timm model by name, load ``model.weights`` safely, return (model, identity)."""
    m = cfg.model
    folder = _timm_folder(cfg)
    if folder is not None:
        return _create_from_folder(folder, m.options)
    if not timm.is_model(m.name):
        hint = did_you_mean(m.name, timm.list_models(), n=3)
        raise ModelError(f"unknown timm model {m.name!r}.{hint} (`python -c \"import timm; print(timm.list_models('vit*'))\"` lists them)")
    weights = weights_path(cfg, f"model {m.name!r}")
    return build_model(cfg, lambda **kwargs: timm.create_model(m.name, pretrained=False, **kwargs),
                       what=f"timm.create_model({m.name!r})", weights=weights, extra=extra,
                       convert=_timm_checkpoint_filter)


def _timm_folder(cfg) -> Path | None:
    """``model.name`` as a folder in timm's own format (a ``config.json`` beside ``model.safetensors``), or None."""
    name = cfg.model.name
    if not any(c in name for c in "/\\"):  # a registry name
        return None
    folder = cfg.resolve_path(name)
    return folder if folder is not None and (folder / "config.json").is_file() else None


def _create_from_folder(folder: Path, options: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``timm.create_model(architecture, **model_args)`` from the folder's ``config.json`` (timm's hub format), its
    ``model.safetensors`` loaded strictly: the same steps as ``timm.create_model("local-dir:FOLDER",
    pretrained=True)``, with any timm 1.x."""

    try:
        record = json.loads((folder / "config.json").read_text())
        architecture, args = str(record["architecture"]), dict(record.get("model_args", {}))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{folder / 'config.json'} is not a timm model config ({type(exc).__name__}: {exc}): write "
                         "it with timm.models.save_for_hf, or export the configuration again") from None
    if options:
        raise ModelError(f"model.options {sorted(options)} do not apply to a saved timm folder ({folder}): its "
                         "config.json holds the model's arguments; remove [model] options")
    if not timm.is_model(architecture):
        raise ModelError(f"{folder / 'config.json'} names the architecture {architecture!r}, which this timm "
                         f"({timm.__version__}) does not know")
    model = timm.create_model(architecture, pretrained=False, **args)
    digest = load_pretrained(model, folder / "model.safetensors", convert=None)
    identity = {"kind": "timm", "name": str(folder), "options": args, "seed": 0, "weights": digest}
    return model.eval(), identity


def _timm_checkpoint_filter(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's own conversion of original checkpoints (JAX, DINOv2, …) to its key names, where the model's
    family has one."""
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    return state if filter_fn is None else filter_fn(state, model)


def _fixed_input_size(name: str) -> bool:
    """Whether a timm model is built for one input size (ViTs: position embeddings), so that a configured
    ``data.image_size`` must go to its constructor; CNNs take any size."""
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    return bool(pretrained_cfg is not None and pretrained_cfg.fixed_input_size)


class _BlocksInput(Exception):
    """Ends a ``forward_features`` call at ``model.blocks``, carrying the blocks' input."""

    def __init__(self, x: torch.Tensor):
        super().__init__("model.blocks reached")
        self.x = x


class TimmViT(Adapter):
    """timm ``VisionTransformer`` (and subclasses: DeiT, DINOv2-style with register tokens).

    Vectors are every token (CLS and register tokens included); all samples have the same token count.
    """

    layout = "tokens"
    model: VisionTransformer

    def __init__(self, model: VisionTransformer, identity: dict[str, Any], image_size: int | None = None):
        super().__init__(model, model.blocks, identity=identity)
        self.preprocess = ImagePreprocess.for_timm(model, image_size)

    def collate(self, samples):
        return self.preprocess(samples)

    def embed(self, inputs):
        """What ``forward_features`` hands to ``model.blocks`` (patch and position embeddings, prefix tokens, the
        pre-norm), taken by a forward pre-hook that ends the forward there: timm's public surface has no call
        for the embeddings alone, and this stays right whatever timm's model does before its blocks."""

        def stop(_module, args):
            raise _BlocksInput(args[0])

        handle = self.model.blocks.register_forward_pre_hook(stop)
        try:
            self.model.forward_features(self.to_model(inputs))
        except _BlocksInput as reached:
            return reached.x, Context()
        finally:
            handle.remove()
        raise ModelError(f"{type(self.model).__name__}.forward_features did not call model.blocks (gradient "
                         "checkpointing on?): rba needs the blocks run as one nn.Sequential")

    def pool(self, h, ctx):
        return self.model.forward_head(self.model.norm(h), pre_logits=True)

    def logits(self, pooled):
        return self.model.head(pooled)

    def fold_target(self, k):
        """``mlp.fc2`` of timm's pre-norm ``Block`` (x + drop_path(ls2(mlp(norm2(x))))) without LayerScale: its
        output is added to the residual stream as it is (drop path is the identity in inference)."""
        block = self.blocks[k]
        if type(block) is not Block or not isinstance(block.ls2, nn.Identity) or not hasattr(block.mlp, "fc2"):
            what = ("LayerScale (ls2) scales the MLP output" if type(block) is Block and not isinstance(block.ls2, nn.Identity)
                    else f"its blocks are {type(block).__name__}, not timm's pre-norm Block with an fc2 MLP")
            raise ModelError(f"{type(self.model).__name__}: fit kind \"fold\" is not supported here ({what}); use "
                             "[fit] kind = \"affine\"")
        return "mlp.fc2"

    def without_blocks(self, drop: Sequence[int]) -> nn.Module:
        """``timm.create_model(architecture, depth=kept, **arguments)``, the arguments this model was built with
        (its identity's options), loaded strictly with the kept blocks' weights renumbered 0..kept-1 (a fold's
        block with its folded fc2 among them, when :func:`rba.apply.replace_` has put one in)."""
        dropped = set(drop)
        keep = [k for k in range(self.num_blocks) if k not in dropped]
        model = timm.create_model(self.model.pretrained_cfg["architecture"], pretrained=False,
                                  **self._model_args(len(keep)))
        number = {old: new for new, old in enumerate(keep)}
        state = {}
        for key, tensor in self.model.state_dict().items():
            if key.startswith("blocks."):
                index, rest = key[len("blocks."):].split(".", 1)
                if int(index) not in number:
                    continue
                key = f"blocks.{number[int(index)]}.{rest}"
            state[key] = tensor
        model.load_state_dict(state, strict=True)
        return model.to(self.dtype).eval()

    def _model_args(self, depth: int) -> dict[str, Any]:
        """The ``create_model`` arguments of this model (its identity's options) with ``depth`` blocks."""
        return dict(self.identity.get("options", {})) | {"depth": depth}

    def save_native(self, model: nn.Module, folder: Path) -> None:
        """timm's own format through ``timm.models.save_for_hf``: ``model.safetensors`` and ``config.json``
        (``architecture``, ``model_args``, the preprocessing), which ``timm.create_model("local-dir:FOLDER",
        pretrained=True)`` reloads, or by hand ``timm.create_model(architecture, **model_args)`` and the weights."""
        depth = len(list(model.get_submodule("blocks").children()))
        save_for_hf(model, str(folder), model_args=self._model_args(depth), safe_serialization=True)

    def forward(self, inputs):
        m = self.model
        return m.forward_head(m.forward_features(self.to_model(inputs)), pre_logits=True)

    def example_inputs(self):
        s = self.preprocess.image_size
        return torch.zeros(1, self.preprocess.channels, s, s, device=self.device, dtype=self.dtype)


def build_timm(cfg) -> Adapter:
    """``[model] kind = "timm"``: a ViT-family model (``model.blocks``) or a CNN (ResNet-style stages)."""
    image_size = cfg.data.image_size
    extra = {}
    if image_size is not None and _timm_folder(cfg) is None and _fixed_input_size(cfg.model.name):
        extra["img_size"] = image_size
    model, identity = create_timm_model(cfg, **extra)
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        return TimmViT(model, identity, image_size=image_size)
    return TimmCNN(model, identity, image_size=image_size)
