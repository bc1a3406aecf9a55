"""The generic ``kind = "module"`` adapter, on the toy models of ``_toy.py``."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import staged_forward

from rba.adapters._module import resolve_attr
from rba.adapters._registry import create_adapter
from rba.apply import SpanMap, replace_
from rba.config import Config
from rba.errors import ModelError

# the toy module's import name, however pytest imported this file (rootdir-relative package or bare module)
TOY = (__name__.rpartition(".")[0] + "._toy") if "." in __name__ else "_toy"
toy = importlib.import_module(TOY)


def make_cfg(factory, blocks="layers", *, size=16, pretrained=False, weights=None, **options) -> Config:
    model = {"kind": "module", "name": f"{TOY}:{factory}", "pretrained": pretrained, "options": options,
             "trust_code": True}
    if blocks is not None:
        model["blocks"] = blocks
    if weights is not None:
        model["weights"] = str(weights)
    data = {"kind": "synthetic"} | ({"image_size": size} if size else {})
    return Config.from_dict({"model": model, "data": data})


def make(factory, blocks="layers", **kw):
    return create_adapter(make_cfg(factory, blocks, **kw))


def rand_images(n=3, c=3, s=16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, s, s), dtype=np.uint8)


staged = staged_forward


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def replace_check(adapter, x, spans, layout):
    """Spans replaced in the real model == staged evaluation with apply_map; restore() undoes it."""
    g = torch.Generator().manual_seed(1)
    dims = adapter.dims()
    maps = {(i, j): (torch.eye(dims[i], dims[j]) + 0.1 * torch.randn(dims[i], dims[j], generator=g),
                     0.1 * torch.randn(dims[j], generator=g)) for i, j in spans}
    with torch.no_grad():
        ref = adapter.forward(x)
        handle = replace_(adapter, list(maps), [SpanMap.from_solution(w, b, layout=layout, span=s) for s, (w, b) in maps.items()])
        try:
            out = adapter.forward(x)
            close(out, staged(adapter, x, maps))
            assert not torch.allclose(out, ref, rtol=1e-3, atol=1e-3)
        finally:
            handle.restore()
        assert torch.equal(adapter.forward(x), ref)


def test_conv_net_pixels():
    adapter = make("conv_net", "body", channels=4, depth=4)
    m = adapter.model
    assert adapter.layout == "pixels" and adapter.num_blocks == 4 and adapter.blocks is m.body
    assert adapter.identity["weights"] == "random" and adapter.identity["blocks"] == "body"
    x = adapter.collate(rand_images())
    assert x.shape == (3, 3, 16, 16) and torch.equal(x, torch.as_tensor(rand_images()).float() / 255)
    with torch.no_grad():
        pooled = staged(adapter, x)
        close(pooled, adapter.forward(x))
        # independent: the model's own layers, then the documented mean pooling
        close(pooled, m.body(m.stem(x)).mean(dim=(2, 3)))
        h, ctx = adapter.embed(x)
        close(h, m.stem(x))
    assert adapter.logits(pooled) is None
    # block 2 halves H, W and doubles C: spans cannot cross it
    assert adapter.boundary_shapes() == [(4, 16, 16)] * 3 + [(8, 8, 8)] * 2
    assert adapter.valid_spans() == [(0, 1), (0, 2), (1, 2), (3, 4)]
    v = adapter.vectors(h, ctx)
    assert v.shape == (3 * 16 * 16, 4)
    close(v[2 * 256 + 5 * 16 + 7], h[2, :, 5, 7], tol=0)
    replace_check(adapter, x, [(0, 2), (3, 4)], "pixels")


def test_token_mlp_tokens():
    adapter = make("token_mlp", dim=8, depth=3, patch=4)
    m = adapter.model
    assert adapter.layout == "tokens" and adapter.num_blocks == 3
    x = adapter.collate(rand_images(c=1))  # gray → 3 channels
    assert x.shape == (3, 3, 16, 16)
    with torch.no_grad():
        pooled = staged(adapter, x)
        close(pooled, adapter.forward(x))
        h = m.patch(x).flatten(2).transpose(1, 2)
        for layer in m.layers:
            h = layer(h)
        close(pooled, h.mean(1))
        h0, ctx = adapter.embed(x)
    assert h0.shape == (3, 16, 8)
    assert adapter.valid_spans() == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert adapter.valid_spans(max_span=1) == [(0, 1), (1, 2), (2, 3)]
    assert adapter.vectors(h0, ctx).shape == (3 * 16, 8)
    replace_check(adapter, x, [(0, 1), (1, 3)], "tokens")


def test_resize_seed_and_weights(tmp_path):
    from safetensors.torch import save_file

    a = make("token_mlp", size=8, dim=8)
    assert a.collate(rand_images(s=16)).shape == (3, 3, 8, 8)
    b = make("token_mlp", size=8, dim=8)
    c = make("token_mlp", size=8, dim=8, seed=3)
    assert torch.equal(a.model.patch.weight, b.model.patch.weight)
    assert not torch.equal(a.model.patch.weight, c.model.patch.weight)
    assert "seed" not in a.identity["options"] and c.identity["seed"] == 3
    path = tmp_path / "toy.safetensors"
    save_file(dict(c.model.state_dict()), str(path))
    d = make("token_mlp", size=8, pretrained=True, weights=path, dim=8)
    assert torch.equal(d.model.patch.weight, c.model.patch.weight) and d.identity["weights"] != "random"
    with pytest.raises(ModelError, match="does not match"):
        make("token_mlp", size=8, pretrained=True, weights=path, dim=4)


def test_resolve_attr():
    m = toy.token_mlp(dim=4)
    assert resolve_attr(m, "layers.1.fc1") is m.layers[1].fc1
    with pytest.raises(ModelError, match="no attribute 'blocks'"):
        resolve_attr(m, "blocks")
    with pytest.raises(ModelError, match="no item 7"):
        resolve_attr(m, "layers.7")


@pytest.mark.parametrize(
    "factory, blocks, options, match",
    [
        ("token_mlp", None, {}, "needs model.blocks"),
        ("token_mlp", "head", {}, "must name an nn.ModuleList"),
        ("token_mlp", "layer", {}, "no attribute 'layer'"),
        ("no_such_factory", "layers", {}, "no callable"),
        ("NOT_A_FACTORY", "layers", {}, "no callable"),
        ("token_mlp", "layers", {"width": 3}, "could not be called"),
        ("not_chained", "layers", {}, "chained"),
    ],
)
def test_errors(factory, blocks, options, match):
    with pytest.raises(ModelError, match=match):
        make(factory, blocks, **options)


def test_more_errors():
    with pytest.raises(ModelError, match="package.module:factory"):
        create_adapter(Config.from_dict({"model": {"kind": "module", "name": "torch.nn.Linear", "blocks": "x"}}))
    with pytest.raises(ModelError, match="cannot import"):
        create_adapter(Config.from_dict({"model": {"kind": "module", "name": "no_such_pkg_xyz:f", "blocks": "x", "pretrained": False,
                                                          "trust_code": True}}))
    with pytest.raises(ModelError, match="model.weights"):
        make("token_mlp", pretrained=True)
    with pytest.raises(ModelError, match="data.image_size"):
        make("token_mlp", size=None)
    adapter = make("token_mlp", dim=4)
    with pytest.raises(ModelError, match="images only"):
        adapter.collate(["a text"])
    with pytest.raises(ModelError, match="channels"):
        adapter.collate(rand_images(c=2))


def test_module_factory_is_not_run_without_trust_code(tmp_path):
    """A config naming code to call is refused unless it opts in; the factory is never called."""
    marker = tmp_path / "ran"
    cfg = Config.from_dict({"model": {"kind": "module", "name": "pathlib:Path.touch", "blocks": "x",
                                      "pretrained": False, "options": {"self": str(marker)}}})
    with pytest.raises(ModelError, match="trust_code = true"):
        create_adapter(cfg)
    assert not marker.exists()
