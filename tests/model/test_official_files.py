"""The official files end to end, at tiny size: the reference's tiny weights written the way users download
them (SD as a Lightning-style `.ckpt` with a `state_dict` wrapper, ControlNets as plain `.pth`, one with a
`module.` prefix, SwinIR as a Lightning `.ckpt`), under the registry's file names, loaded by
`DiffBIRPipeline.from_preset("full", files_config="tiny")` -- the same code path as the real files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import weights
from model.cldm import ControlLDM
from model.errors import CheckpointMismatchError
from model.faces.detection import CenteredFaceDetector, RetinaFaceDetector
from model.faces.parsing import FaceParser
from model.loaders import convert_version, converted_cache_path
from model.loading import TINY_CONTROLNET_FILE, TINY_SD_FILES
from model.options import RestoreOptions
from model.pipeline import DiffBIRPipeline
from tests.model.reference import TINY_DIR

STAGE1_FIXTURES = {"swinir": "weights_swinir", "bsrnet": "weights_bsrnet", "scunet": "weights_scunet"}
# Which official file gets the DataParallel `module.` prefix (the reference loader strips it).
MODULE_PREFIXED = {"v1_general", "v2", "v2.1", "bsrnet"}
FAST = RestoreOptions(upscale=1.0, steps=1, seed=3, cfg_scale=4.0, fidelity=0.5)


def _lightning(state_dict: dict[str, torch.Tensor]) -> dict[str, object]:
    """What a Lightning `.ckpt` holds next to the weights (plain values, so `weights_only` loads it)."""
    return {"state_dict": state_dict, "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.4.2"}


def write_official_files(
    root: Path, version: str, drop: tuple[str, str] | None = None, faces: Path | None = None
) -> Path:
    """Every file `version` needs, in the official layouts, from the tiny reference weights; the
    unaligned_face task's detector and parser only with `faces` (the `face_weight_files` folder, linked).

    `drop=(registry name, key)` leaves one key out of that file (to test the error)."""
    root.mkdir(parents=True, exist_ok=True)
    sd: dict[str, torch.Tensor] = {}
    for name in TINY_SD_FILES:
        sd.update(load_file(TINY_DIR / name))
    sd["model_ema.decay"] = torch.tensor(0.9999)  # real SD checkpoints hold keys no module reads
    for w in weights.version_files(version):
        if w.role in ("face_detector", "face_parser"):
            if faces is not None:
                (root / w.filename).symlink_to(faces / w.filename)
            continue
        if w.role == "sd":
            tensors = dict(sd)
        elif w.role == "controlnet":
            tensors = load_file(TINY_DIR / TINY_CONTROLNET_FILE)
        else:
            assert w.stage1_kind is not None
            tensors = load_file(TINY_DIR / f"{STAGE1_FIXTURES[w.stage1_kind]}.safetensors")
        if drop is not None and drop[0] == w.name:
            del tensors[drop[1]]
        if w.name in MODULE_PREFIXED:
            tensors = {f"module.{k}": v for k, v in tensors.items()}
        obj = _lightning(tensors) if w.filename.endswith(".ckpt") else tensors
        torch.save(obj, root / w.filename)
    return root


def _load(root: Path, version: str, **kwargs: object) -> DiffBIRPipeline:
    return DiffBIRPipeline.from_preset(
        "full", version, weights_dir=root, device="cpu", precision="fp32", files_config="tiny", **kwargs
    )


def _image(h: int = 12, w: int = 20) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow  # four restores, and the face nets' ~200 MB of files
def test_v2_official_files_load_and_restore(
    tmp_path: Path, tiny_cldm: ControlLDM, face_weight_files: Path
) -> None:
    pipe = _load(write_official_files(tmp_path, "v2", faces=face_weight_files), "v2")
    assert pipe.tasks == ("sr", "face", "denoise", "unaligned_face")
    kinds = {t: net.kind for t, net in pipe.stage1.items()}
    assert kinds == {"sr": "bsrnet", "face": "swinir", "denoise": "scunet"}
    assert pipe.faces is not None
    assert isinstance(pipe.faces.detector, RetinaFaceDetector) and isinstance(pipe.faces.parser, FaceParser)
    # Random detector weights "find" thousands of faces: restore one known face (through the loaded parser).
    pipe.faces = dataclasses.replace(pipe.faces, detector=CenteredFaceDetector())
    model = pipe.models["sr"]
    assert model.parameterization == "eps" and not model.diffusion.zero_snr
    assert _same_weights(model, tiny_cldm)  # same tensors as the fixture path, after every unwrapping
    for task, upscale, size in [
        ("sr", 2.0, (24, 40)),
        ("face", 1.0, (12, 20)),
        ("denoise", 1.0, (12, 20)),
        ("unaligned_face", 2.0, (24, 40)),
    ]:
        result = pipe.restore(_image(), RestoreOptions(task=task, upscale=upscale, steps=1, seed=0))
        assert result.image.shape == (*size, 3) and result.image.dtype == np.uint8
        assert (result.faces is not None) == (task == "unaligned_face")


def test_v1_two_controlnets_share_one_sd(tmp_path: Path) -> None:
    pipe = _load(write_official_files(tmp_path, "v1"), "v1", tasks=["sr", "face"])
    sr, face = pipe.models["sr"], pipe.models["face"]
    assert sr.unet is face.unet and sr.vae is face.vae and sr.text is face.text
    assert sr.controlnet is not face.controlnet
    assert _same_weights(sr.controlnet, face.controlnet)  # v1_general.pth (module.) == v1_face.pth here
    assert pipe.restore(_image(), FAST).image.shape == (12, 20, 3)


def test_v21_files_get_the_zero_snr_v_prediction_diffusion(tmp_path: Path) -> None:
    pipe = _load(write_official_files(tmp_path, "v2.1"), "v2.1", tasks=["denoise"])
    model = pipe.models["denoise"]
    assert model.parameterization == "v" and model.diffusion.zero_snr
    assert pipe.stage1["denoise"].kind == "swinir"
    result = pipe.restore(_image(), RestoreOptions(task="denoise", upscale=1.0, steps=1, seed=0))
    assert result.image.shape == (12, 20, 3)


@pytest.mark.parametrize(
    "name, key, named",
    [
        ("v2", "zero_convs.0.0.weight", "controlnet_down_blocks.0.weight"),
        ("sd_v2.1", "model.diffusion_model.out.2.weight", "conv_out.weight"),
        ("sd_v2.1", "first_stage_model.decoder.conv_out.bias", "decoder.conv_out.bias"),
        ("sd_v2.1", "cond_stage_model.model.ln_final.weight", "ln_final.weight"),
        ("swinir_face", "conv_first.1.weight", "conv_first.1.weight"),
        ("bsrnet", "conv_last.weight", "conv_last.weight"),
    ],
)
def test_a_missing_key_is_named(tmp_path: Path, name: str, key: str, named: str) -> None:
    root = write_official_files(tmp_path, "v2", drop=(name, key))
    with pytest.raises(CheckpointMismatchError) as info:
        _load(root, "v2", tasks=weights.NET_TASKS)
    assert named in info.value.missing
    assert named in str(info.value)


def test_a_renamed_key_is_named_both_ways(tmp_path: Path) -> None:
    """A renamed key names the key in the file (unexpected) AND the module key it should fill (missing)."""
    root = write_official_files(tmp_path, "v2")
    path = root / "v2-1_512-ema-pruned.ckpt"
    ckpt = torch.load(path, weights_only=True)
    sd = ckpt["state_dict"]
    sd["model.diffusion_model.out.2.weights"] = sd.pop("model.diffusion_model.out.2.weight")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointMismatchError) as info:
        _load(root, "v2", tasks=["sr"])
    assert info.value.missing == ["conv_out.weight"]
    assert info.value.unexpected == ["model.diffusion_model.out.2.weights"]


def test_convert_then_load_from_the_cache_gives_identical_outputs(tmp_path: Path) -> None:
    root = write_official_files(tmp_path, "v2")
    options = RestoreOptions(task="denoise", upscale=1.0, steps=2, seed=5)
    from_pickles = _load(root, "v2", tasks=["denoise"]).restore(_image(), options).image
    (written,) = convert_version("v2", root, files_config="tiny")
    assert written == converted_cache_path(root, "v2", "v2")
    for w in weights.required("v2", "denoise").values():  # the cache replaces the SD and ControlNet files
        if w.role != "stage1":
            (root / w.filename).unlink()
    from_cache = _load(root, "v2", tasks=["denoise"]).restore(_image(), options).image
    assert np.array_equal(from_pickles, from_cache)
