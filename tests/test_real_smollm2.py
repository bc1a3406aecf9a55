"""The real SmolLM2-135M-Instruct (4-bit GGUF dequantised by transformers) through kind causal-lm."""

import pytest
import torch

from rba.models import model_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not model_file("smollm2").is_file(),
                       reason="SmolLM2 GGUF not in the rba cache: fetch it with `rba data smollm2`"),
]

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm2():
    from rba.adapters import create_adapter
    from rba.config import Config

    cfg = Config.from_dict({"model": {"kind": "causal-lm", "name": "SmolLM2-135M-Instruct", "pretrained": True}})
    return create_adapter(cfg)


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
