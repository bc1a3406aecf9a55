"""The build every adapter family shares (rba/adapters/_builder.py): seeded construction, weights, identity."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rba.adapters import create_adapter
from rba.adapters._builder import build_model
from rba.config import Config
from rba.errors import ModelError


def _cfg(kind="timm", name="test_vit", *, image_size=None, pretrained=False, weights=None, **options) -> Config:
    model = {"kind": kind, "name": name, "pretrained": pretrained, "options": options}
    if weights is not None:
        model["weights"] = str(weights)
    data = {"kind": "synthetic"} | ({"image_size": image_size} if image_size else {})
    return Config.from_dict({"model": model, "data": data})


def _mlp(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(3, width), nn.Linear(width, 2))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_seeded_build_is_reproducible_and_leaves_the_callers_generator_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, ida = build_model(_cfg(seed=7), _mlp, what="mlp", weights=None)
    after = torch.rand(3)
    b, _ = build_model(_cfg(seed=7), _mlp, what="mlp", weights=None)
    c, idc = build_model(_cfg(seed=8), _mlp, what="mlp", weights=None)
    torch.testing.assert_close(after, expected_next, rtol=0, atol=0)
    torch.testing.assert_close(_flat(a), _flat(b), rtol=0, atol=0)
    assert not torch.equal(_flat(a), _flat(c))
    assert ida == {"kind": "timm", "name": "test_vit", "options": {}, "seed": 7, "weights": "random"}
    assert idc["seed"] == 8 and not a.training


def test_weights_load_with_digest_and_bad_options_give_one_error(tmp_path):
    source = _mlp()
    path = tmp_path / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, identity = build_model(_cfg(pretrained=True, seed=3), _mlp, what="mlp", weights=path)
    torch.testing.assert_close(_flat(model), _flat(source), rtol=0, atol=0)
    assert len(identity["weights"]) == 16 and identity["weights"] != "random"
    with pytest.raises(ModelError, match=r"^mlp could not be called with options \{'depth': 2\}"):
        build_model(_cfg(depth=2), _mlp, what="mlp", weights=None)


def test_a_failing_checkpoint_conversion_names_the_mismatch(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in _mlp(width=5).state_dict().items()}, str(path))

    def convert(state, model):
        raise KeyError("pos_embed")  # what a converter does on a checkpoint of another architecture

    with pytest.raises(ModelError) as err:
        build_model(_cfg(pretrained=True), _mlp, what="mlp", weights=path, convert=convert)
    msg = str(err.value)
    assert msg.startswith(f"weights file {path} does not match the architecture: 3 shape clashes (e.g. 0.")
    assert msg.endswith("(the checkpoint conversion failed: KeyError: 'pos_embed')")


def test_timm_image_size_goes_to_fixed_size_models_only():
    vit = create_adapter(_cfg(image_size=48))
    assert vit.identity["options"] == {"img_size": 48}
    assert vit.boundary_shapes()[0] == (-1, 64) and vit.model.patch_embed.grid_size == (3, 3)  # 48 px / patch 16
    cnn = create_adapter(_cfg(name="test_resnet", image_size=48, layers=[1, 1, 1, 1]))
    assert cnn.identity["options"] == {"layers": [1, 1, 1, 1]}  # a CNN takes any size: nothing to build for
    assert cnn.boundary_shapes()[0][1:] == (12, 12)
