"""OpenCLIP text tower: tokens and penultimate-layer context against the reference fixture `clip`."""

from __future__ import annotations

import pytest
import torch

from model.cldm import ControlLDM
from tests.model.reference import assert_forward_close, load_fixture

CLIP, CLIP_META = load_fixture("clip")
PROMPTS: list[str] = CLIP_META["prompts"]


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_tokens_match_reference(tiny_cldm: ControlLDM, index: int) -> None:
    tokens = tiny_cldm.text.tokenize([PROMPTS[index]])
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, CLIP[f"prompt{index}.tokens"])


def test_long_prompt_is_truncated_to_76_tokens_plus_eot(tiny_cldm: ControlLDM) -> None:
    tokens = tiny_cldm.text.tokenize([PROMPTS[4]])[0]
    assert tokens[0] == 49406 and tokens[-1] == 49407
    assert (tokens != 0).all()  # no padding left: the prompt fills the context


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_context_matches_reference(tiny_cldm: ControlLDM, index: int) -> None:
    tiny_cldm.text.clear_cache()
    with torch.no_grad():
        from_tokens = tiny_cldm.text(CLIP[f"prompt{index}.tokens"])
    assert_forward_close(from_tokens, CLIP[f"prompt{index}.c_txt"], f"prompt{index} from tokens")
    assert_forward_close(
        tiny_cldm.text.encode(PROMPTS[index]), CLIP[f"prompt{index}.c_txt"], f"prompt{index}"
    )


def test_batch_matches_reference(tiny_cldm: ControlLDM) -> None:
    tiny_cldm.text.clear_cache()
    batch = tiny_cldm.text.encode(CLIP_META["batch_prompts"])
    assert_forward_close(batch, CLIP["batch.c_txt"], "batch")
    assert torch.equal(tiny_cldm.text.tokenize(CLIP_META["batch_prompts"]), CLIP["batch.tokens"])


def test_cache_returns_same_values_and_is_bounded(tiny_cldm: ControlLDM) -> None:
    text = tiny_cldm.text
    text.clear_cache()
    first = text.encode(["a photo", "", "a photo"])
    assert torch.equal(first[0], first[2])
    assert len(text._cache) == 2
    calls = []
    handle = text.model.token_embedding.register_forward_hook(lambda *_: calls.append(1))
    try:
        again = text.encode(["", "a photo"])
    finally:
        handle.remove()
    assert calls == []  # served from the cache
    assert torch.equal(again, first[[1, 0]])
    old_size = text.cache_size
    try:
        text.cache_size = 2
        many = text.encode([f"prompt {i}" for i in range(5)])  # more prompts than the cache holds
        assert many.shape == (5, 77, text.width)
        assert len(text._cache) == 2
    finally:
        text.cache_size = old_size
        text.clear_cache()


def test_loading_weights_clears_cache(tiny_cldm: ControlLDM) -> None:
    text = tiny_cldm.text
    text.encode("a photo")
    assert text._cache
    text.model.load_state_dict(text.model.state_dict())
    assert not text._cache


def test_text_tower_has_no_visual_or_projection(tiny_cldm: ControlLDM) -> None:
    keys = tiny_cldm.text.state_dict().keys()
    assert not any("visual" in k or "text_projection" in k or "logit_scale" in k for k in keys)
