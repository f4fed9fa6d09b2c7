"""Shared model fixtures: the tiny ControlLDM built from the reference's fixture weights.

The weights go through the same official-layout conversion path as the real SD 2.1 / IRControlNet files, so
every test using `tiny_cldm` also exercises the converters. Session-scoped and read-only: tests must not edit
its weights (build your own with `model.loading.load_reference_tiny` if you need to).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.cldm import ControlLDM
from model.loading import init_tiny_random, load_reference_tiny
from tests.model.reference import TINY_DIR


@pytest.fixture(scope="session")
def tiny_cldm() -> ControlLDM:
    """Tiny ControlLDM (eps prediction, diffusion "sd") with the reference fixture weights, float32 on CPU."""
    return load_reference_tiny(TINY_DIR, diffusion="sd")


@pytest.fixture(scope="session")
def tiny_cldm_v21() -> ControlLDM:
    """The same weights declared as v2.1 (zero-SNR schedule, v-prediction), for v-prediction sampler runs."""
    return load_reference_tiny(TINY_DIR, diffusion="v2.1")


@pytest.fixture(scope="session")
def tiny_cldm_random() -> ControlLDM:
    """`init_tiny_random(seed=0)`: deterministic random weights that are NOT the reference's."""
    return init_tiny_random(seed=0)


@pytest.fixture(scope="session")
def face_weight_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the unaligned_face task's two files in their official layouts, random weights:
    `detection_Resnet50_Final.pth` in the least plain layout facexlib's loader accepts (`module.` prefixes,
    which it strips, and no BatchNorm counters, which torch fills in) and `parsing_parsenet.pth` (plain keys).
    Written once per session (about 200 MB); tests link them into their weights folders."""
    from model.faces.detection import build_retinaface
    from model.faces.parsing import build_parsenet

    root = tmp_path_factory.mktemp("face-weights")
    torch.manual_seed(0)
    det = build_retinaface().state_dict()
    det = {f"module.{k}": v for k, v in det.items() if not k.endswith("num_batches_tracked")}
    torch.save(det, root / "detection_Resnet50_Final.pth")
    torch.save(build_parsenet().state_dict(), root / "parsing_parsenet.pth")
    return root
