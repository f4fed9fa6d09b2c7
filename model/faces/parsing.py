"""Face-region masks from facexlib's ParseNet (19 CelebAMask-HQ classes), loaded from our weights directory.

Upstream DiffBIR's unaligned loop blends each restored face through the smaller of a square soft mask and
this mask, so hair, neck, clothes and background around the face keep the background restoration. The mask
recipe (classes kept, two 101 px Gaussian blurs, a 10 px border cleared) is FaceRestoreHelper's.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from model.checkpoints import fill_batchnorm_counters, load_state_dict, load_strict

PARSE_SIZE = 512  # ParseNet's input and output size
# CelebAMask-HQ classes left OUT of the face region: background, neck, cloth, hair, hat.
OUTSIDE_CLASSES = (0, 14, 16, 17, 18)
NUM_CLASSES = 19
BLUR_KERNEL, BLUR_SIGMA, BORDER_PX = 101, 11, 10


def build_parsenet() -> torch.nn.Module:
    """facexlib's ParseNet as `init_parsing_model("parsenet")` builds it, untrained, in eval mode."""
    from facexlib.parsing.parsenet import ParseNet

    return ParseNet(in_size=PARSE_SIZE, out_size=PARSE_SIZE, parsing_ch=NUM_CLASSES).eval()


class FaceParser:
    """Soft face-region masks of restored, aligned face crops."""

    def __init__(self, net: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        self.net = net.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu") -> FaceParser:
        """From an official `parsing_parsenet.pth`, strictly."""
        net = build_parsenet()
        sd = fill_batchnorm_counters(net, load_state_dict(path))
        load_strict(net, sd, "ParseNet (parsing_parsenet.pth)")
        return cls(net, device)

    @torch.no_grad()
    def mask(self, face: np.ndarray) -> np.ndarray:
        """float32 mask in [0, 1] of an aligned H x W x 3 uint8 RGB face crop, at the crop's size."""
        h, w = face.shape[:2]
        x = cv2.resize(face, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
        # RGB in [-1, 1], the order facexlib feeds ParseNet (upstream DiffBIR passes its RGB crops through
        # facexlib's BGR->RGB conversion, so it feeds BGR; we keep the order the net was trained on).
        t = torch.from_numpy(x.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(self.device)
        logits = self.net((t - 0.5) / 0.5)[0]
        classes = logits.argmax(dim=1)[0].cpu().numpy()
        region = np.where(np.isin(classes, OUTSIDE_CLASSES), 0.0, 255.0)
        for _ in range(2):
            region = cv2.GaussianBlur(region, (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA)
        region[:BORDER_PX, :] = 0
        region[-BORDER_PX:, :] = 0
        region[:, :BORDER_PX] = 0
        region[:, -BORDER_PX:] = 0
        return cv2.resize((region / 255.0).astype(np.float32), (w, h))
