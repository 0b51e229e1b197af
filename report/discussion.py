"""Recall–scalability section, the answers to the three questions and the conclusion, each citing the study's
measured numbers (or saying 'missing' where the study has none)."""
from __future__ import annotations

from tools.collect_results import RECALLS

from .folder import Experiment, Study
from .markup import MISSING, bullets, code, esc
from .results import metric, row_label
from .scale import ScaleTable, cell, scale_table
from .sections import descriptor_dims


def baseline_recall(study: Study, agg: str, dataset: str | None) -> str:
    """'R@1 x ± s' of a baseline on a dataset, as its table shows it; 'missing' otherwise."""
    exp = dict(study.baselines()).get(agg)
    if exp is None or exp.table is None or dataset is None:
        return MISSING
    col = f"{dataset} R@{RECALLS[0]}"
    rows = [r for r in exp.table.rows if exp.table.stat(r, col)[0] is not None]
    return metric(exp.table, rows[0], col) if rows else MISSING


def baseline_facts(study: Study) -> list[str]:
    """One bullet per baseline: R@1 on the training and the transfer dataset."""
    train, transfer = study.plan.get("train_dataset"), study.plan.get("transfer_dataset")
    return [f"{esc(agg)}: R\\@1 {esc(baseline_recall(study, agg, train))} on {esc(train)}, "
            f"{esc(baseline_recall(study, agg, transfer))} on {esc(transfer)}" for agg, _ in study.baselines()]


def varying(study: Study, flag: str) -> list[Experiment]:
    """The experiments whose plan says they vary flag."""
    return [e for e in study.experiments if flag in e.varies]


def row_facts(study: Study, flag: str, with_time: bool = False) -> list[str]:
    """One bullet per row of every experiment varying flag: R@1 on the training dataset (and training time)."""
    train = study.plan.get("train_dataset")
    facts = []
    for exp in varying(study, flag):
        if exp.table is None:
            facts.append(f"{esc(exp.title)}: results {MISSING}")
            continue
        t = exp.table
        for row in t.rows:
            text = f"{esc(exp.title)}, {esc(row_label(t, row))}: R\\@1 {esc(metric(t, row, f'{train} R@1'))}"
            if with_time and "train_time_s" in t.metrics:
                text += f", training time {esc(metric(t, row, 'train_time_s'))} s"
            facts.append(text)
    return facts or [f"no experiment of this study varies {code('--' + flag)}: {MISSING}"]


def scale_facts(st: ScaleTable | None) -> list[str]:
    """One bullet per scale row: its size, bytes, figures at the largest database size and recall change."""
    if st is None:
        return [f"recall–scalability measurements: {MISSING} (scale/results.json not found)"]
    keys = st.key_columns()
    return [f"{esc(label)}: {esc('; '.join(f'{c} {cell(cols.get(c))}' for c in keys) or MISSING)}"
            for _, label, cols in st.rows]


def scale_section(st: ScaleTable | None) -> str:
    """The measured recall–scalability table."""
    sizes = esc(", ".join(st.sizes)) if st and st.sizes else "several"
    out = ("= Recall and scalability\nA database of $N$ descriptors of $D$ float32 dimensions takes $4 N D$ bytes, "
           "and exhaustive search costs $O(N D)$ per query. The table reports, for each descriptor and index, its "
           f"size, memory and search time per query at {sizes} database images (synthetic descriptors of the "
           "scale benchmark beyond the study's own database) and the change of recall on the study's test split "
           "(eval.py with `--pca_dim` or `--index`).\n")
    if st is None:
        return out + f"\n*Measurements: {MISSING}* (scale/results.json not found in the study folder).\n"
    out += scale_table(st, "Recall–scalability, measured (scale/results.json).")
    return out + (f"#text(size: 8.5pt)[{esc(st.notes)}]\n" if st.notes else "")


def questions(study: Study, st: ScaleTable | None) -> str:
    """Answers to the three questions, each followed by the study's numbers."""
    dims = {agg: esc(dim or MISSING) for agg, dim in descriptor_dims(study).items()}
    dims = {"gem": dims.get("gem", MISSING), "netvlad": dims.get("netvlad", MISSING)}
    return f"""= Three questions
== What is contrastive learning, and how does it relate to image retrieval?
Contrastive (metric) learning trains an embedding from comparisons instead of labels: descriptors of matching
images (here, photos taken within the training radius) are pulled together and those of non-matching images pushed
apart, with a pair loss @hadsell, a triplet loss @facenet or a probabilistic variant such as SARE @sare. Image
retrieval needs exactly such an embedding: once trained, the nearest neighbours of a query descriptor are the
database images most likely to show the same place, so localization is a nearest-neighbour search. In this study:
{bullets(baseline_facts(study) + row_facts(study, 'criterion'))}
== What is mining, and what are its downsides?
Mining chooses the training negatives: most random database images are already far from the query and give a zero
triplet loss, so the miner encodes candidates with the current model and keeps the hardest (closest) ones. Its
downsides: the encoding costs time (a full pass over the database at every cache refresh), the cached descriptors go
stale as the model changes, and the hardest negatives are often label noise (images of the same place beyond the
radius, or views of the same façade), which can slow or destabilize training. The number of negatives kept per
query sets the cost of training itself: a query with $M$ negatives is $2 + M$ images through the network, forward
and backward. In this study:
{bullets(row_facts(study, 'mining', with_time=True) + row_facts(study, 'negs_num_per_query', with_time=True))}
== How do NetVLAD and GeM relate to the recall–scalability trade-off?
GeM gives one value per channel ({dims['gem']} dimensions in this study), NetVLAD one residual per cluster and
channel ({dims['netvlad']} dimensions): richer, often more accurate, but its memory and exhaustive search time grow
with the number of clusters $K$.
PCA (with whitening) and compressed indexes such as IVF-PQ @faiss cut memory and search time at a cost in recall.
In this study:
{bullets(baseline_facts(study) + scale_facts(st))}
"""


def conclusion(study: Study) -> str:
    """What was run, what came out, what is missing."""
    with_results = [e for e in study.experiments if e.table is not None]
    missing = [e.title for e in study.experiments if e.table is None]
    out = (f"= Conclusion\nThe study planned {len(study.experiments)} experiments; {len(with_results)} have results"
           + (f" and {len(missing)} are missing ({esc(', '.join(missing))})" if missing else "") + ". The baselines:\n")
    out += bullets(baseline_facts(study))
    out += ("The ablations and variations above show which choices change recall by more than the seed-to-seed "
            "spread (the standard deviations in their tables); a difference smaller than that spread is not a finding "
            "of this study.\n")
    return out
