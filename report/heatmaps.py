"""Where the model looks: per-location activation energy of the backbone feature map, laid over queries.

The energy of a location is the L2 norm over channels of `model.features(x)` (B×C×h×w → B×h×w), upsampled
bilinearly to the image and scaled to [0, 1] per image. Queries are taken from an eval.py run's prediction
pictures (`<query index>_<correct|wrong>.jpg`), so that right and wrong top-1 predictions are both shown.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .folder import Experiment, Study
from .plots import plt, save

PER_KIND = 2  # queries shown per outcome (right, wrong)


def activation_energy(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images B×3×H×W (model input) → energy B×H×W in [0, 1]: channel L2 norm of the feature map, upsampled."""
    with torch.no_grad():
        energy = model.features(x).float().norm(dim=1, keepdim=True)  # B×1×h×w
    energy = F.interpolate(energy, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]  # B×H×W
    low = energy.amin(dim=(1, 2), keepdim=True)
    high = energy.amax(dim=(1, 2), keepdim=True)
    return (energy - low) / (high - low).clamp(min=1e-12)


def predicted_queries(folder: Path) -> list[tuple[int, bool]]:
    """(query index, top-1 correct) of the prediction pictures an eval.py run saved, by query index."""
    found = []
    for pic in sorted((folder / "predictions").glob("*_*.jpg")):
        index, outcome = pic.stem.split("_", 1)
        if index.isdigit() and outcome in ("correct", "wrong"):
            found.append((int(index), outcome == "correct"))
    return found


def pick(queries: list[tuple[int, bool]], per_kind: int = PER_KIND) -> list[tuple[int, bool]]:
    """The first per_kind right and the first per_kind wrong queries."""
    right = [q for q in queries if q[1]][:per_kind]
    wrong = [q for q in queries if not q[1]][:per_kind]
    return right + wrong


@dataclass
class Source:
    """An eval.py run with prediction pictures, and the checkpoint and dataset it evaluated."""
    folder: Path
    checkpoint: Path
    datasets_folder: Path
    args: dict
    queries: list[tuple[int, bool]]


def find_existing(candidates: list[Path]) -> Path | None:
    """The first candidate path that exists (None when none does)."""
    return next((p for p in candidates if p.exists()), None)


def find_source(study: Study, exp: Experiment) -> Source | None:
    """The first evaluation of exp on the training dataset that saved prediction pictures (then any other)."""
    train_name = study.plan.get("train_dataset")
    evals = [(f, r) for f, r in study.eval_results(exp) if isinstance(r.get("checkpoint"), str)]
    evals.sort(key=lambda fr: fr[1].get("dataset") != train_name)
    for folder, res in evals:
        queries = pick(predicted_queries(folder))
        args = res.get("args") or {}
        ckpt = Path(res["checkpoint"])
        checkpoint = find_existing([ckpt, study.root / "runs" / Path(*ckpt.parts[-4:])])
        name = args.get("dataset_name", "")
        data = find_existing([Path(p) / name for p in (args.get("datasets_folder"), study.plan.get("datasets_folder"),
                                                       study.root / "worlds") if p])
        if queries and checkpoint and data:
            return Source(folder, checkpoint, data.parent, args, queries)
    return None


def load_queries(source: Source, resize: tuple[int, int]) -> torch.Tensor:
    """The chosen query images, resized as the evaluation saw them: uint8 B×3×H×W."""
    from datasets_ws import BaseDataset
    ds = BaseDataset(str(source.datasets_folder), source.args["dataset_name"], source.args.get("split", "test"),
                     resize)
    return torch.stack([ds.load_uint8(ds.database_num + q) for q, _ in source.queries])


def baseline_heatmaps(source: Source, path: Path, device: str = "cpu") -> Path:
    """The heatmap figure of the queries of source (right ones first, then wrong ones)."""
    from eval import load_trained_model
    from dataio.images import to_input
    model = load_trained_model(str(source.checkpoint), device, "fp32").eval()
    resize = tuple(source.args.get("test_resize") or source.args.get("resize") or (480, 640))
    images = load_queries(source, resize)  # B×3×H×W uint8
    energy = activation_energy(model, to_input(images, device, "fp32")).cpu()  # B×H×W
    fig, axes = plt.subplots(1, len(images), figsize=(2.0 * len(images), 2.3), squeeze=False)
    for ax, image, heat, (q, correct) in zip(axes[0], images, energy, source.queries):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.imshow(heat.numpy(), cmap="jet", alpha=0.45)
        ax.set_title(f"query {q}: {'right' if correct else 'wrong'}", fontsize=8,
                     color="green" if correct else "red")
        ax.axis("off")
    return save(fig, path)
