"""Report sections that describe the study: title page, introduction, related work, method, data."""
from __future__ import annotations

import shutil
from collections import Counter
from datetime import date
from pathlib import Path

from commons import UserError

from .folder import Study, read_json
from .markup import MISSING, esc, string, table

TITLE = "Visual geo-localization with GeM and NetVLAD"


def duration(seconds: float | None) -> str:
    """'2 h 05 min', '3 min 20 s', '12 s'; 'missing' for None."""
    if seconds is None:
        return MISSING
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def machine_text(machine: dict) -> str:
    """The machine of status.json in one line."""
    if not machine:
        return MISSING
    parts = [machine.get("cpu") or "unknown CPU", f"{machine['cores']} cores" if machine.get("cores") else None,
             machine.get("cpu_capability"), f"GPU: {machine['gpu']}" if machine.get("gpu") else "no GPU",
             f"torch {machine['torch']}" if machine.get("torch") else None]
    return ", ".join(p for p in parts if p)


def title_page(study: Study) -> str:
    """Title, datasets, machine, dates, compute time and run counts, then the table of contents."""
    plan, status = study.plan, study.status
    states = sum((e.state_counts() for e in study.experiments), Counter())
    planned = sum(len(e.own_runs) for e in study.experiments)
    source = ("generated synthetic worlds (no datasets folder)" if plan.get("embedded") else
              f"datasets folder {plan.get('datasets_folder', MISSING)}")
    rows = [["training dataset", plan.get("train_dataset", MISSING)],
            ["transfer dataset", plan.get("transfer_dataset", MISSING)], ["data", source],
            ["seeds", " ".join(map(str, plan.get("seeds", []))) or MISSING],
            ["machine", machine_text(status.get("machine") or {})],
            ["study started", status.get("started") or MISSING],
            ["study finished", status.get("finished") or "not finished"],
            ["total compute time", duration(status.get("compute_seconds"))],
            ["runs", (f"{planned} planned: {states['done']} done, {states['failed']} failed, "
                      f"{planned - states['done'] - states['failed']} not run")],
            ["report written", f"{date.today().isoformat()} from {study.root.name}/ by report.py"]]
    info = table([[string("study"), string("")]], rows, 2, align="left")
    return (f"#align(center)[\n#set par(justify: false)\n#v(2.5cm)\n#text(21pt, weight: \"bold\")[{TITLE}]\n#v(4mm)\n"
            f"#text(13pt)[Baselines, ablations and variations of one study, every number measured]\n#v(1.5cm)\n"
            f"#block(width: 85%)[{info}]\n]\n#pagebreak()\n#outline(indent: auto)\n#pagebreak()\n")


def introduction(study: Study) -> str:
    """What the task is and what the report contains."""
    parts = Counter(e.part for e in study.experiments)
    train, transfer = esc(study.plan.get("train_dataset", MISSING)), esc(study.plan.get("transfer_dataset", MISSING))
    base = next((a for a in (study.train_args(e) for _, e in study.baselines()) if a), None)
    return f"""= Introduction
Visual geo-localization (VG) estimates where a photo was taken by retrieving the most similar images from a
database of geo-tagged photos @masone2021survey @berton2022benchmark. A query counts as localized at $N$ when one
of its $N$ nearest database images lies within a success radius ({esc(arg(base, 'val_positive_dist_threshold'))} m
in this study) of its true position; recall\\@N is the fraction of localized queries.

This report gathers one study run with this toolkit: {parts['baseline']} baseline experiments (ResNet-18
@resnet with GeM @gem or NetVLAD @netvlad, trained with a triplet loss on {train} and also tested on
{transfer}), {parts['ablation']} ablations and
{parts['variation']} variations, each over the seeds {esc(' '.join(map(str, study.plan.get('seeds', []))))}.
Every number comes from the study's run folders; an experiment without results is marked as missing.
"""


def related_work() -> str:
    """The field in a few paragraphs, citing its references."""
    return """= Related work
*Global descriptors.* VG is usually cast as image retrieval over global descriptors @masone2021survey.
NetVLAD @netvlad aggregates the residuals of local CNN features to learned cluster centres into one large vector;
GeM @gem pools each channel with a generalized mean, giving a compact descriptor as long as the feature map has
channels. The VG benchmark of Berton et al. @berton2022benchmark compares these choices under one protocol, whose
flags this toolkit keeps. Pittsburgh @pitts and St Lucia @stlucia are its classic datasets; Mapillary Street-Level
Sequences (MSLS) @msls adds a large, varied training set across cities and seasons.

*Losses.* Metric learning trains the embedding so that images of the same place are closer than images of others:
the contrastive loss @hadsell on pairs, the triplet loss @facenet on (query, positive, negative) triplets, and
SARE @sare, which treats the same triplets probabilistically. SOLAR @solar adds a second-order similarity loss and
attention to retrieval; SOE-Net @soenet combines self-attention with an orientation encoding and a hard-positive
hard-negative quadruplet loss for place recognition from point clouds.

*Attention and context.* CRN @crn reweights local features with a context-aware mask before NetVLAD; CBAM @cbam
applies channel and spatial attention inside a CNN; non-local blocks @nonlocal relate all positions of a feature
map; the attentive hybrid approach of Berton et al. @berton2021hybrid adds an attention layer and domain adaptation
from a few target queries for cross-domain geo-localization.

*Transformers.* ViT @vit splits an image into 16×16 patches and processes them as tokens; like BERT @bert it
prepends a learnable CLS token whose output summarizes the sequence and can serve as a global descriptor. Compact
Convolutional Transformers (CCT) @cct replace the patch embedding by convolutions and the CLS token by sequence
pooling, making transformers trainable on small data.

*Search.* Exhaustive nearest-neighbour search grows linearly with the database; faiss @faiss provides exact and
compressed indexes (inverted files with product quantization, IVF-PQ) that trade recall for memory and speed.
"""


def arg(args: dict | None, key: str) -> str:
    """A training flag of a baseline run as text ('missing' without the run)."""
    value = (args or {}).get(key)
    return MISSING if value is None else (" × ".join(map(str, value)) if isinstance(value, list) else str(value))


GEM_FORMULA = r"""$ f_c = (1/(|Omega|) sum_(u in Omega) x_(c u)^p)^(1\/p), quad
  bold(f) = [f_1, dots, f_C] \/ norm([f_1, dots, f_C]). $"""
NETVLAD_FORMULA = r"""$ bold(V)_k = sum_(u in Omega)
  (e^(bold(w)_k^T bold(x)_u + b_k)) / (sum_(k') e^(bold(w)_(k')^T bold(x)_u + b_(k'))) (bold(x)_u - bold(c)_k),
  quad k = 1, dots, K. $"""
TRIPLET_FORMULA = r"""$ cal(L) = 1/(B M) sum_(b=1)^B sum_(j=1)^M
  max(0, d(bold(q)_b, bold(p)_b) - d(bold(q)_b, bold(n)_(b j)) + m). $"""


def descriptor_dims(study: Study) -> dict[str, int | None]:
    """Baseline aggregation → descriptor size of its model, built from its args.json on the meta device."""
    import torch
    from network import build_model
    dims: dict[str, int | None] = {}
    for agg, exp in study.baselines():
        args = study.train_args(exp)
        try:
            with torch.device("meta"):  # shapes only: no memory, no weights
                dims[agg] = int(build_model(args).out_dim) if args else None
        except (RuntimeError, ValueError, KeyError, UserError):
            dims[agg] = None
    return dims


def method(study: Study) -> str:
    """Architecture, GeM and NetVLAD, the triplet loss and mining, with the baselines' own settings."""
    args = {agg: study.train_args(exp) for agg, exp in study.baselines()}
    dims = descriptor_dims(study)
    vlad = args.get("netvlad")
    base = args.get("gem") or vlad
    a = {k: esc(arg(base, k)) for k in ("resize", "backbone", "pretrain", "train_positives_dist_threshold",
                                        "negs_num_per_query", "val_positive_dist_threshold", "margin", "mining",
                                        "cache_refresh_rate", "neg_samples_num", "optim", "lr", "train_batch_size")}
    gem_dim, vlad_dim = esc(dims.get("gem") or MISSING), esc(dims.get("netvlad") or MISSING)
    return f"""= Method
*Architecture.* A ResNet-18 @resnet cut after its fourth block (conv4, `layer3`; backbone {a['backbone']},
pretraining {a['pretrain']}) maps an image of {a['resize']} pixels to a feature map $X in RR^(C times H times W)$
of $C$ channels. An aggregation layer turns $X$ into one L2-normalized global descriptor; retrieval ranks the
database by Euclidean distance to the query descriptor (exact faiss search).

*GeM* @gem pools each channel $c$ over the locations $u in Omega$ of the map with a learnable exponent $p$:
{GEM_FORMULA}
$p = 1$ is average pooling and $p -> infinity$ max pooling; the descriptor has $C$ dimensions ({gem_dim} in this
study).

*NetVLAD* @netvlad softly assigns every L2-normalized local feature $bold(x)_u$ to $K$ clusters (here
$K = $ {esc(arg(vlad, 'netvlad_clusters'))}, initialized by k-means) and sums the residuals to the cluster
centres $bold(c)_k$: {NETVLAD_FORMULA}
Each $bold(V)_k$ is L2-normalized (intra-normalization), then the concatenation; the descriptor has $K C$
dimensions ({vlad_dim} in this study).

*Triplet loss.* Each training query $q$ comes with its nearest positive $p$ (a database image within
{a['train_positives_dist_threshold']} m, nearest in feature space) and $M$ = {a['negs_num_per_query']} negatives
$n_j$ (farther than {a['val_positive_dist_threshold']} m). With $d$ the Euclidean distance of descriptors and
margin $m$ = {a['margin']}: {TRIPLET_FORMULA}

*Mining.* Random negatives are mostly easy and give a zero loss. Every {a['cache_refresh_rate']} queries the
miner (`--mining` {a['mining']}) encodes the database with the current model and keeps, for each query, the
hardest negatives among {a['neg_samples_num']} random database images and its previous hard negatives. Training
uses {a['optim']} with learning rate {a['lr']}, batches of {a['train_batch_size']} queries, and keeps the model
with the best validation recall\\@5.
"""


def data_section(study: Study, figures: Path, base: Path) -> str:
    """analyze_dataset.py's numbers and figures for the training and the transfer dataset."""
    out = "= Data\n"
    for role, name in (("training", study.plan.get("train_dataset")), ("transfer", study.plan.get("transfer_dataset"))):
        folder = study.root / "analysis" / str(name)
        summary = read_json(folder / "summary.json")
        out += f"== The {role} dataset: {esc(name or MISSING)}\n"
        if summary is None:
            out += f"The analysis of this dataset is {MISSING} ({esc(f'analysis/{name}/summary.json')} not found).\n"
            continue
        out += split_table(summary, f"Splits of the {role} dataset {name}: images, positives per query within "
                                    f"the train and evaluation radii, distance from each query to its nearest "
                                    f"database image (analyze_dataset.py).")
        shown = [f for f in ("map_all_splits.png", "positives_test.png", "samples_test.png")
                 if (folder / f).is_file()]
        copies = [copy_figure(folder / f, figures / f"data_{name}_{f}") for f in shown]
        cells = ", ".join(f"image({string(c.relative_to(base).as_posix())})" for c in copies)
        if copies:
            out += (f"#figure(grid(columns: {len(copies)}, gutter: 6pt, align: horizon, {cells}), caption: "
                    f"[{esc(name)}: {esc(', '.join(Path(f).stem.replace('_', ' ') for f in shown))} "
                    f"(analyze_dataset.py)])\n")
    return out


def copy_figure(source: Path, target: Path) -> Path:
    """Copy an image into the report's figures folder (the report folder stays self-contained)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def split_table(summary: dict, caption: str) -> str:
    """Images, positives per query and nearest-database distance of every split of an analyze_dataset summary."""
    thresholds = summary.get("thresholds_m", {})
    radii = [f"{thresholds[k]:g}" for k in ("train", "eval") if k in thresholds]
    header = [[string(h) for h in ["split", "database", "queries"] + [f"median positives ≤ {r} m" for r in radii] +
               [f"queries without positives ≤ {radii[-1]} m" if radii else "queries without positives",
                "median nearest database (m)"]]]
    rows = []
    for split, st in summary.get("splits", {}).items():
        pos = st.get("positives_per_query", {})
        rows.append([split, str(st.get("database_num")), str(st.get("queries_num"))] +
                    [f"{pos[r]['median']:g}" if r in pos else MISSING for r in radii] +
                    [str(pos.get(radii[-1], {}).get("queries_without_positives", MISSING)) if radii else MISSING,
                     f"{st['nearest_database_distance_m']['median']:.1f}" if "nearest_database_distance_m" in st
                     else MISSING])
    return table(header, rows, len(header[0]), caption=esc(caption))
