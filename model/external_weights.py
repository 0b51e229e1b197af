"""Weights from outside torchvision, where dVGL uses them, read from files the user places.

* `--pretrain places|gldv2`: ResNet-18/50/101 and VGG-16 trained on Places365 / Google Landmarks v2 by the VG
  benchmark authors (github.com/rm-wu/pretrain_vg), as torchvision state dicts, in data/pretrained_nets/ (dVGL's
  folder and file names, relative to the working directory).
* `--backbone cct384 --pretrain imagenet`: the ImageNet CCT-14/7x2-384 of the CCT authors (SHI-Labs).
* eval.py `--off_the_shelf radenovic_sfm|radenovic_gldv1|naver`: ResNet-50/101 + GeM + FC 2048 trained for landmark
  retrieval (Radenović et al., Revaud et al.), in data/off_the_shelf_nets/.

Nothing is downloaded from Google Drive or another site: a missing file stops with one line naming the file and the
folder to put it in. Files are read with torch.load(weights_only=True), so no code runs on load.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from commons import UserError

PRETRAINED_NETS_DIR = Path("data/pretrained_nets")
OFF_THE_SHELF_DIR = Path("data/off_the_shelf_nets")
PRETRAIN_SOURCES = {"places": ("Places365", 365), "gldv2": ("Google Landmarks v2", 512)}  # name, classes
PRETRAIN_ARCHS = ("resnet18", "resnet50", "resnet101", "vgg16")
CCT384_URL = "https://shi-labs.com/projects/cct/checkpoints/finetuned/cct_14_7x2_384_imagenet.pth"
RADENOVIC_URLS = {
    ("resnet50conv5", "sfm"): "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/retrieval-SfM-120k/"
                              "rSfM120k-tl-resnet50-gem-w-97bf910.pth",
    ("resnet101conv5", "sfm"): "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/retrieval-SfM-120k/"
                               "rSfM120k-tl-resnet101-gem-w-a155e54.pth",
    ("resnet50conv5", "gldv1"): "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/gl18/"
                                "gl18-tl-resnet50-gem-w-83fdc30.pth",
    ("resnet101conv5", "gldv1"): "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/gl18/"
                                 "gl18-tl-resnet101-gem-w-a4d43db.pth",
}
NAVER_FILES = {"resnet50conv5": "Resnet50-AP-GeM.pt", "resnet101conv5": "Resnet-101-AP-GeM.pt"}
OFF_THE_SHELF = ("imagenet", "radenovic_sfm", "radenovic_gldv1", "naver")
OFF_THE_SHELF_ARCH = {"backbone": ("resnet50conv5", "resnet101conv5"), "aggregation": ("gem",),
                      "fc_output_dim": (2048,)}


def read_state_dict(path: Path, what: str) -> dict:
    """torch.load(path, weights_only=True), with one-line errors; returns what the file holds."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (foreign objects), RuntimeError/EOFError (truncated), ...
        raise UserError(f"{path} ({what}) cannot be read safely ({type(e).__name__}); replace it with a plain "
                        f"state dict (torch.save(model.state_dict(), '{path}'))") from None


def pretrained_net_path(arch: str, source: str) -> Path:
    """data/pretrained_nets/<arch>_<source>.pth, the file --pretrain <source> reads; stops if it is missing."""
    if arch not in PRETRAIN_ARCHS:
        raise UserError(f"--pretrain {source}: the VG benchmark released {source} weights only for "
                        f"{', '.join(PRETRAIN_ARCHS)}, not {arch}; use --pretrain imagenet or none")
    path = PRETRAINED_NETS_DIR / f"{arch}_{source}.pth"
    if not path.is_file():
        raise UserError(f"--pretrain {source} needs {path} ({arch} trained on {PRETRAIN_SOURCES[source][0]} by the "
                        f"VG benchmark authors, see github.com/rm-wu/pretrain_vg); place the file there, or use "
                        f"--pretrain imagenet")
    return path


def load_pretrained_net(arch: str, source: str) -> nn.Module:
    """torchvision model `arch` with the Places365 / GLDv2 weights of `pretrained_net_path`."""
    import torchvision
    path = pretrained_net_path(arch, source)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=PRETRAIN_SOURCES[source][1])
    try:
        model.load_state_dict(read_state_dict(path, f"--pretrain {source}"))
    except RuntimeError as e:
        raise UserError(f"{path} does not hold {arch} weights with {PRETRAIN_SOURCES[source][1]} classes "
                        f"({str(e).splitlines()[-1].strip()[:120]}); replace the file") from None
    return model


def cct384_imagenet_path() -> Path:
    """<torch hub>/checkpoints/cct_14_7x2_384_imagenet.pth, the CCT authors' ImageNet weights; stops if missing."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(CCT384_URL).name
    if not path.is_file():
        raise UserError(f"--backbone cct384 --pretrain imagenet needs {path}; download {CCT384_URL} there, "
                        f"or pass --pretrain none")
    return path


def load_cct384_imagenet(model: nn.Module, path: Path) -> None:
    """Load the CCT authors' ImageNet CCT-14/7x2-384 (file `path`) into a cct.CCTFeatures; the classification head
    and the sequence-pooling weights are dropped."""
    state = read_state_dict(path, "CCT-14/7x2-384 ImageNet weights")
    own = model.state_dict()
    missing = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if missing:
        raise UserError(f"{path} is not the CCT-14/7x2-384 checkpoint (no matching {missing[0]}); download "
                        f"{CCT384_URL} again")
    model.load_state_dict({k: state[k] for k in own})


def off_the_shelf_path(name: str, backbone: str) -> Path:
    """The file eval.py --off_the_shelf <name> reads for `backbone`; stops with where to put it when missing."""
    if name.startswith("radenovic"):
        url = RADENOVIC_URLS[(backbone, name.split("_")[1])]
        path = OFF_THE_SHELF_DIR / Path(url).name
        if not path.is_file():
            raise UserError(f"--off_the_shelf {name} needs {path}; download {url} into {OFF_THE_SHELF_DIR}/")
        return path
    path = OFF_THE_SHELF_DIR / f"{backbone}_naver.pth"
    if not path.is_file():
        raise UserError(f"--off_the_shelf naver needs {path}: naver's {NAVER_FILES[backbone]} (deep-image-retrieval) "
                        f"holds pickled sklearn objects that are not loaded here; where you trust the file, load it "
                        f"once with weights_only=False and torch.save its ['state_dict'] to {path}")
    return path


def check_off_the_shelf(name: str, arch: Mapping) -> None:
    """dVGL's rule: off-the-shelf networks are ResNet-50/101 conv5 + GeM + FC 2048 (arch: backbone, ...)."""
    if name == "imagenet":
        return
    bad = {k: arch.get(k) for k, allowed in OFF_THE_SHELF_ARCH.items() if arch.get(k) not in allowed}
    if bad:
        raise UserError(f"--off_the_shelf {name} networks are ResNet-50/101 + GeM + FC 2048; got "
                        f"{', '.join(f'--{k} {v}' for k, v in bad.items())}; pass --backbone resnet101conv5 (or "
                        f"resnet50conv5) --aggregation gem --fc_output_dim 2048")
    off_the_shelf_path(name, arch["backbone"])


def load_by_position(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into model pairing tensors by position, as dVGL does for off-the-shelf files whose key names
    differ (same layer order: backbone, GeM p, FC); BatchNorm counters are left out on both sides."""
    own = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    theirs = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    shapes = model.state_dict()
    bad = next((k for k, v in zip(own, theirs) if tuple(v.shape) != tuple(shapes[k].shape)), None)
    if len(own) != len(theirs) or bad is not None:
        raise UserError(f"{source} does not fit this model ({len(theirs)} tensors for {len(own)}"
                        f"{f', first shape mismatch at {bad}' if bad else ''}); check --backbone, --aggregation "
                        f"and --fc_output_dim")
    model.load_state_dict(dict(zip(own, theirs)), strict=False)


def load_off_the_shelf(model: nn.Module, name: str, backbone: str) -> None:
    """Weights of eval.py --off_the_shelf <name> (radenovic_*: the file's 'state_dict'; naver: a plain state dict)."""
    path = off_the_shelf_path(name, backbone)
    state = read_state_dict(path, f"--off_the_shelf {name}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    load_by_position(model, state, str(path))
