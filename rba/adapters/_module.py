"""Any ``nn.Module`` whose forward runs a list of blocks in sequence: ``[model] kind = "module"``.

``model.name = "package.module:factory"`` names a callable that returns the model (called with
``model.options``, less ``seed``); ``model.blocks`` is the dotted path to its block list inside the model
(``"blocks"``, ``"encoder.layers"``, ``"0.layers"``). Each block must be called as ``block(h) -> h`` and the
forward must feed each block's output straight into the next one (checked once when the adapter is built).

What rba cannot know about a generic model, and so assumes:

- **inputs**: images only (uint8 N×C×H×W), scaled to 0..1 (``x / 255``) and resized to ``data.image_size``;
  no mean/std normalisation. Text inputs are not supported (use ``kind = "huggingface"``).
- **layout**: from the boundary tensors: 3-D (N, T, D) is "tokens" (every token is a vector, no padding),
  4-D (N, C, H, W) is "pixels".
- **pooling**: generic models have no known pooled representation, so ``pool`` is the mean of the last
  boundary's vectors in each sample (mean over tokens, or over pixel positions). The model's own head, if
  any, is not used (``logits`` is None).
- **forward**: the model's own forward up to the output of the last block (stopped there with a hook), then
  the same mean pooling; so replacements swapped into ``model.blocks`` run inside the model's own code.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rba.adapters._base import Adapter, Context
from rba.adapters._builder import build_model
from rba.errors import ModelError

__all__ = ["ModuleAdapter", "build_module", "resolve_attr"]


class _Stop(Exception):
    """Raised by a hook to end the model's forward early (private: never escapes this module)."""


def resolve_attr(root: nn.Module, dotted: str) -> Any:
    """``"encoder.layers"`` → ``root.encoder.layers``; integer parts index containers (``"0.layers"``)."""
    obj: Any = root
    walked: list[str] = []
    for part in dotted.split("."):
        if part.lstrip("-").isdigit() and not hasattr(obj, part):
            try:
                obj = obj[int(part)]
            except (TypeError, IndexError, KeyError):
                raise ModelError(f"model.blocks = {dotted!r}: {'.'.join(walked) or 'the model'} has no item {part}") from None
        else:
            if not hasattr(obj, part):
                children = [n for n, _ in obj.named_children()] if isinstance(obj, nn.Module) else []
                hint = f" (its children: {', '.join(children)})" if children else ""
                raise ModelError(f"model.blocks = {dotted!r}: {'.'.join(walked) or 'the model'} has no attribute {part!r}{hint}")
            obj = getattr(obj, part)
        walked.append(part)
    return obj


def _first_input_channels(model: nn.Module) -> int:
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            return mod.in_channels
    return 3


class ModuleAdapter(Adapter):
    """See the module docstring. ``layout`` is measured from boundary 0 when the adapter is built."""

    def __init__(self, model: nn.Module, blocks: nn.ModuleList | nn.Sequential, identity: dict[str, Any],
                 image_size: int | None, channels: int):
        super().__init__(model, blocks, identity=identity)
        self.image_size = image_size
        self.channels = channels
        with torch.inference_mode():
            h, _ = self.embed(self.example_inputs())
        if h.dim() == 3:
            self.layout = "tokens"
        elif h.dim() == 4:
            self.layout = "pixels"
        else:
            raise ModelError(
                f"the input of {identity['name']}'s first block is {h.dim()}-D {tuple(h.shape)}; rba handles "
                "(N, T, D) tokens and (N, C, H, W) feature maps"
            )

    # ------------------------------------------------------------------ inputs
    def collate(self, samples):
        if isinstance(samples, (list, tuple)) and samples and isinstance(samples[0], str):
            raise ModelError("[model] kind = \"module\" takes images only; for text models use kind = \"huggingface\" "
                             "or \"sentence-transformers\"")
        x = torch.as_tensor(np.asarray(samples)).float() / 255.0
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ModelError(f"images must be N×C×H×W, got shape {tuple(x.shape)}")
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != self.channels:
            raise ModelError(f"images have {x.shape[1]} channels; the model's first convolution takes {self.channels}")
        if self.image_size is not None and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x.contiguous()

    def example_inputs(self):
        if self.image_size is None:
            raise ModelError("[model] kind = \"module\" needs data.image_size to know the model's input size")
        return torch.zeros(1, self.channels, self.image_size, self.image_size, device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ stages
    def _run_until(self, inputs: torch.Tensor, block: nn.Module, *, output: bool) -> torch.Tensor:
        """Run the model's own forward until ``block`` is entered (output=False) or left (output=True)."""
        captured: list[torch.Tensor] = []

        def pre_hook(_m, args):
            captured.append(args[0])
            raise _Stop

        def hook(_m, _args, out):
            captured.append(out)
            raise _Stop

        handle = block.register_forward_hook(hook) if output else block.register_forward_pre_hook(pre_hook)
        try:
            self.model(self.to_model(inputs))
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            where = "left" if output else "entered"
            raise ModelError(f"the forward of {self.identity['name']} never {where} the block at model.blocks = "
                             f"{self.identity['blocks']!r}: check that path")
        out = captured[0]
        if not torch.is_tensor(out):
            raise ModelError(f"blocks of {self.identity['name']} must take and return one tensor; got {type(out).__name__}")
        return out

    def embed(self, inputs):
        return self._run_until(inputs, self.blocks[0], output=False), Context()

    def pool(self, h, ctx):
        if self.layout == "pixels":
            return h.mean(dim=(2, 3))
        if ctx.mask is not None:
            m = ctx.mask.to(h.dtype).unsqueeze(-1)
            return (h * m).sum(1) / m.sum(1).clamp_min(1)
        return h.mean(dim=1)

    def forward(self, inputs):
        """The model's own forward, stopped at the output of its last block, then :meth:`pool`."""
        return self.pool(self._run_until(inputs, self.blocks[len(self.blocks) - 1], output=True), Context())

    def check_chaining(self) -> None:
        """Raise ModelError when the model's forward does more than chain its blocks (staged ≠ forward)."""
        with torch.inference_mode(), torch.random.fork_rng():
            torch.manual_seed(0)
            x = torch.rand(2, *self.example_inputs().shape[1:], device=self.device, dtype=self.dtype)
            h = self.last_boundary(*self.embed(x))
            ref = self._run_until(x, self.blocks[len(self.blocks) - 1], output=True)
        if h.shape != ref.shape or (h - ref).abs().max() > 1e-4 * (1 + ref.abs().max()):
            raise ModelError(
                f"{self.identity['name']}'s forward does not just run model.blocks = {self.identity['blocks']!r} one "
                "after the other as block(h) -> h (the staged run differs from its own forward): rba needs blocks "
                "that are chained directly"
            )


def build_module(cfg) -> Adapter:
    """``[model] kind = "module"``: see the module docstring."""
    m = cfg.model
    if ":" not in m.name:
        raise ModelError(f"model.name = {m.name!r}: kind = \"module\" wants \"package.module:factory\", a callable "
                         "that returns the nn.Module")
    module_name, _, attr = m.name.partition(":")
    if not m.trust_code:
        raise ModelError(
            f"model.name = {m.name!r}: kind = \"module\" imports {module_name!r} and calls {attr!r}, which runs code "
            "named by the config; set model.trust_code = true if you trust it (configs are otherwise read as data)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model.name = {m.name!r}: cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"model.name = {m.name!r}: {module_name} has no callable {attr!r}")
    if not m.blocks:
        raise ModelError("kind = \"module\" needs model.blocks: the dotted path to the block list inside the model "
                         "(e.g. \"blocks\" or \"encoder.layers\")")
    weights = cfg.resolve_path(m.weights)
    if m.pretrained and weights is None:
        raise ModelError(f"model {m.name!r}: set model.weights to a local weights file, or pretrained = false to use "
                         "the factory's own (seeded random) initialisation")

    def check_module(model: Any) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"{m.name} returned a {type(model).__name__}, not a torch nn.Module")
        blocks = resolve_attr(model, m.blocks)
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            raise ModelError(f"model.blocks = {m.blocks!r} is a {type(blocks).__name__}; it must name an nn.ModuleList "
                             "or nn.Sequential of blocks")
        if len(blocks) == 0:
            raise ModelError(f"model.blocks = {m.blocks!r} is empty")

    model, identity = build_model(cfg, factory, what=m.name, weights=weights, check=check_module)
    identity["blocks"] = m.blocks
    blocks = resolve_attr(model, m.blocks)
    adapter = ModuleAdapter(model, blocks, identity, cfg.data.image_size, _first_input_channels(model))
    adapter.check_chaining()
    return adapter
