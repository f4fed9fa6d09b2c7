"""Latent image guidance (DiffBIR paper, Alg. 1; reference release v2.0.0 semantics).

At each step inside the window, the predicted clean latent x0 is pulled towards the stage-1 restoration:
x0 <- x0 - scale * d loss / d x0 * grad_rescale, repeated `repeat` times. The loss compares either latents
("latent": the target is a VAE posterior SAMPLE of the stage-1 image, redrawn at every guided step and
repeat) or images ("rgb": x0 is decoded and the gradient flows back through the decoder). `grad_rescale`
comes from the sampler (1/posterior_mean_coef1 for the reference DDPM), so one Guidance wraps any sampler.

Losses stay on the device as tensors (`last_loss`); nothing here reads a value back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from model.errors import InvalidInputError
from model.noise import draw_noise

# The reference multiplies the user-facing scale by this (its `Guidance.__init__`); model/fidelity.py
# divides it back out when it turns the fidelity knob into a scale.
INTERNAL_SCALE_FACTOR = 3000.0
# The default window (`t_stop < t+1 < t_start`, strict): every training timestep 0..999 is guided.
WINDOW_START = 1001
WINDOW_STOP = -1
LOSSES = ("mse", "w_mse")
SPACES = ("latent", "rgb")
_GRAY = (0.2989, 0.5870, 0.1140)

Region = tuple[int, int, int, int]  # (hi, hi_end, wi, wi_end) in latent cells


class LatentCodec(Protocol):
    """What guidance needs from the VAE (model/vae.py's `VAE` fits)."""

    scale_factor: float
    downscale: int

    def posterior(self, img: torch.Tensor) -> DiagonalGaussianDistribution: ...  # over unscaled latents

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class Guidance:
    """Pulls x0 towards `target` (the padded stage-1 image in [-1,1], [B,3,H,W] with H, W = 8 x latent)."""

    def __init__(
        self,
        vae: LatentCodec,
        target: torch.Tensor,
        scale: float,
        loss: str = "mse",
        space: str = "latent",
        t_start: int = WINDOW_START,
        t_stop: int = WINDOW_STOP,
        repeat: int = 1,
        posterior: DiagonalGaussianDistribution | None = None,
    ) -> None:
        """`posterior`: the target's VAE posterior when the caller has it already (the pipeline computes it
        tiled for big images), so "latent" guidance does not encode the target a second time."""
        if loss not in LOSSES or space not in SPACES:
            raise InvalidInputError(f"guidance loss must be one of {LOSSES} and space one of {SPACES}")
        if loss == "w_mse" and space == "latent":
            # The edge weight is a 1-channel map over RGB pixels; the reference fails here with a shape error.
            raise InvalidInputError("weighted MSE guidance needs space='rgb' (its weights are per RGB pixel)")
        if repeat < 1 or scale < 0:
            raise InvalidInputError(f"guidance needs repeat >= 1 and scale >= 0, got {repeat}, {scale}")
        if target.ndim != 4 or target.shape[1] != 3:
            raise InvalidInputError(f"guidance target must be an image [B,3,H,W], got {tuple(target.shape)}")
        self.vae = vae
        self.scale = scale
        self.internal_scale = scale * INTERNAL_SCALE_FACTOR
        self.loss, self.space, self.repeat = loss, space, repeat
        self.t_start, self.t_stop = t_start, t_stop
        self.target = target.detach()
        self.last_loss: torch.Tensor | None = None  # mean over repeats of the last guided step, 0-d
        self._posterior = None
        self._weight: torch.Tensor | None = None
        with torch.no_grad():
            if space == "latent":
                # Encoding is deterministic up to the sample's noise: encode once, redraw samples each time.
                self._posterior = posterior if posterior is not None else vae.posterior(self.target)
            elif loss == "w_mse":
                self._weight = edge_weight((self.target.float() + 1) / 2)

    def active(self, t: int) -> bool:
        """Whether to guide at training timestep `t` (reference: `t_stop < t+1 < t_start`, strict)."""
        return self.scale > 0 and self.t_stop < t + 1 < self.t_start

    def draw_targets(
        self, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> list[torch.Tensor]:
        """One target per repeat: a fresh scaled posterior sample ("latent") or the image itself ("rgb")."""
        if self._posterior is None:
            return [self.target] * self.repeat
        scale = self.vae.scale_factor
        # mean + std * eps is diffusers' posterior.sample, with the draw made by draw_noise (no host sync).
        post = self._posterior
        return [(post.mean + post.std * draw_noise(post.mean, generator)) * scale for _ in range(self.repeat)]

    def __call__(
        self,
        pred_x0: torch.Tensor,
        grad_rescale: torch.Tensor | float,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Guide the whole latent (check `active(t)` first); sets `last_loss`."""
        x0, losses = self.apply(pred_x0, grad_rescale, self.draw_targets(generator))
        self.last_loss = torch.stack(losses).mean()
        return x0

    def apply(
        self,
        pred_x0: torch.Tensor,
        grad_rescale: torch.Tensor | float,
        targets: Sequence[torch.Tensor],
        region: Region | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`repeat` updates of `pred_x0` (the latent, or its window `region`) -> (x0, per-repeat losses).

        `targets` are full-size (from `draw_targets`); a `region` slices them, so tiled sampling guides each
        window towards its own part of the target.
        """
        # Runs with grad even inside a sampler's no_grad/inference_mode (clone makes normal tensors).
        with torch.inference_mode(False), torch.enable_grad():
            x0 = pred_x0.detach().clone()
            losses = []
            for target in targets:
                x0_var = x0.detach().clone().requires_grad_(True)
                loss = self._loss(x0_var, target, region)
                (grad,) = torch.autograd.grad(loss, x0_var)
                delta = -grad * self.internal_scale
                x0 = x0 + delta * grad_rescale
                losses.append(loss.detach())
        return x0.detach(), losses

    def _loss(self, x0: torch.Tensor, target: torch.Tensor, region: Region | None) -> torch.Tensor:
        """mean over C,H,W of the (weighted) squared error, summed over the batch (as the reference)."""
        target = _crop(target, region, 1 if self.space == "latent" else self.vae.downscale).clone()
        pred = x0 if self.space == "latent" else self.vae.decode(x0).float()
        err = (pred - target.to(pred.dtype)).pow(2)
        if self._weight is not None:
            err = err * _crop(self._weight, region, self.vae.downscale).clone()
        return err.mean(dim=(1, 2, 3)).sum()


def edge_weight(img01: torch.Tensor) -> torch.Tensor:
    """w = 1 - tanh(2x2 block sum of the Sobel gradient magnitude of the gray image) -> [B,1,H,W].

    Hand-written (a few lines of conv) to match the reference's WeightedMSEGuidance exactly: replicate
    padding, BT.601 gray weights and a per-2x2-block tanh; flat areas get weight ~1, edges ~0.
    """
    gray_kernel = torch.tensor(_GRAY, dtype=img01.dtype, device=img01.device).view(1, 3, 1, 1)
    gray = torch.sum(img01 * gray_kernel, dim=1, keepdim=True)
    g_x = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]
    g_y = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]
    sobel = torch.tensor([[g_x], [g_y]], dtype=gray.dtype, device=gray.device)
    grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), sobel)
    mag = grad.pow(2).sum(dim=1, keepdim=True).sqrt()
    n, c, h, w = mag.shape
    if h % 2 or w % 2:
        raise InvalidInputError(f"weighted MSE guidance needs an even image size, got {h}x{w}")
    blocks = mag.view(n, c, h // 2, 2, w // 2, 2).sum(dim=(3, 5), keepdim=True).tanh()
    return 1 - blocks.expand(n, c, h // 2, 2, w // 2, 2).reshape(n, c, h, w)


def _crop(x: torch.Tensor, region: Region | None, factor: int) -> torch.Tensor:
    if region is None:
        return x
    hi, hi_end, wi, wi_end = region
    return x[..., hi * factor : hi_end * factor, wi * factor : wi_end * factor]
