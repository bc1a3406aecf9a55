"""The real SmolLM2-135M-Instruct (4-bit GGUF dequantised by transformers) through kind causal-lm."""

import pytest
import torch
from conftest import USER_MODELS_DIR

from rba.models import MODELS_DIR_ENV, model_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (USER_MODELS_DIR / model_file("smollm2").name).is_file(),
                       reason="SmolLM2 GGUF not in the rba cache: fetch it with `rba data smollm2`"),
]


@pytest.fixture(scope="module", autouse=True)
def _users_models():
    """The model file where the user fetched it (the suite's own cache folder is a temporary one)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODELS_DIR_ENV, str(USER_MODELS_DIR))
        yield

PROMPT = "The capital of France is"


def _load(cache):
    from rba.adapters import create_adapter
    from rba.config import Config

    return create_adapter(Config.from_dict({
        "model": {"kind": "causal-lm", "name": "SmolLM2-135M-Instruct", "pretrained": True},
        "capture": {"cache_dir": str(cache)},
    }))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def smollm2(cache):
    return _load(cache)  # from the .gguf (≈ 1 min), writing its plain float32 copy into the cache


@torch.no_grad()
def test_greedy_continuation_and_the_models_own_logits(smollm2):
    assert smollm2.num_blocks == 30 and smollm2.dims()[0] == 576
    x = smollm2.collate([PROMPT, "Water boils at a temperature of one hundred degrees"])  # the prompt is padded
    mask = x["attention_mask"]
    assert not bool(mask[0].all())
    h, ctx = smollm2.embed(x)
    logits = smollm2.logits(smollm2.pool(smollm2.last_boundary(h, ctx), ctx))
    own = smollm2.model(input_ids=x["input_ids"], attention_mask=mask).logits[mask.bool()]
    torch.testing.assert_close(logits, own, rtol=0, atol=1e-4)
    last = int(mask[0].sum()) - 1  # the prompt's last token: its row in the pooled (n_tokens, D) rows
    assert smollm2.tokenizer.decode(int(logits[last].argmax())) == " Paris"


@torch.no_grad()
def test_the_converted_copy_loads_the_same_model(smollm2, cache):
    again = _load(cache)  # from the plain copy: no dequantisation, and an ordinary (not "quantised") model
    assert not getattr(again.model, "is_quantized", False)
    assert again.identity == smollm2.identity
    x = smollm2.collate([PROMPT])
    torch.testing.assert_close(again.forward(x), smollm2.forward(x), rtol=0, atol=0)
