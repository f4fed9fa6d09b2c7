"""The OpenCLIP ViT-H/14 text tower as SD 2.x uses it: penultimate-layer token context [B, 77, width].

Only open_clip's `TextTransformer` is built (not the 632M-parameter visual tower of the full CLIP model). Its
own forward runs every layer, pools and projects, which SD 2.x does not do, so `forward` runs `resblocks[:-1]`
with the causal mask and then `ln_final` -- that is the whole hand-written part.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from open_clip.tokenizer import tokenize
from open_clip.transformer import TextTransformer
from torch import nn

from model.config import TextConfig


class TextEncoder(nn.Module):
    """Prompt(s) -> context for the UNet's cross-attention, with an LRU cache for repeated prompts.

    Services see the same few prompts (default positive/negative) on every request, so caching their
    embeddings saves a text-tower forward per request. Keys are (prompt, device, dtype); loading weights
    clears the cache.
    """

    def __init__(self, cfg: TextConfig, cache_size: int = 64) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = TextTransformer(
            context_length=cfg.context_length,
            vocab_size=cfg.vocab_size,
            width=cfg.width,
            heads=cfg.heads,
            layers=cfg.layers,
            output_dim=None,  # no text_projection: the token context is read before pooling/projection
            act_layer=nn.GELU,  # exact GELU, as OpenCLIP ViT-H
        )
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str, torch.dtype], torch.Tensor] = OrderedDict()
        self.model.register_load_state_dict_post_hook(lambda *_: self.clear_cache())

    @property
    def width(self) -> int:
        return self.cfg.width

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """open_clip's BPE tokens [B, 77]: SOT, tokens, EOT, zero padding; longer prompts keep 76 tokens +
        EOT."""
        return tokenize(list(prompts), context_length=self.cfg.context_length)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        dtype = m.token_embedding.weight.dtype
        length = tokens.shape[1]
        x = m.token_embedding(tokens.to(m.token_embedding.weight.device)) + m.positional_embedding[:length]
        mask = m.attn_mask[:length, :length].to(dtype=dtype)
        blocks = m.transformer.resblocks
        if self.cfg.layer == "penultimate":
            blocks = blocks[:-1]
        for block in blocks:
            x = block(x, attn_mask=mask)
        return m.ln_final(x)

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Context [B, 77, width] for the prompts (dtype/device of the weights), through the cache."""
        if isinstance(prompts, str):
            prompts = [prompts]
        weight = self.model.token_embedding.weight
        device, dtype = str(weight.device), weight.dtype
        missing = [p for p in dict.fromkeys(prompts) if (p, device, dtype) not in self._cache]
        fresh = dict(zip(missing, self(self.tokenize(missing)).detach(), strict=True)) if missing else {}
        out = []
        for prompt in prompts:
            key = (prompt, device, dtype)
            if prompt in fresh:
                out.append(fresh[prompt])
            else:
                self._cache.move_to_end(key)
                out.append(self._cache[key])
        for prompt, ctx in fresh.items():
            self._remember((prompt, device, dtype), ctx)
        return torch.stack(out)

    def _remember(self, key: tuple[str, str, torch.dtype], ctx: torch.Tensor) -> None:
        self._cache[key] = ctx
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()
