"""Recall-scalability of the study: STUDY/scale/results.json (python -m study.scale STUDY).

Rows (the issue's): GeM 256-D, NetVLAD 16384-D, NetVLAD with PCA to 4096, 1024 and 256 (flat indexes), and
NetVLAD with PCA to 256 in a faiss IVF-PQ index. Columns:
- dim, bytes per image and index memory at 10k, 100k and 1M database images: the faiss index size
  (indexing.index_nbytes; N·D·4 bytes for a flat index);
- search time per query (one batched search of QUERIES queries, k = 5; for a flat index the best of its repeats
  within REPEAT_BUDGET_S seconds, at least one) at those sizes. A flat index is timed
  by exact search over the database in chunks of at most CHUNK_BYTES (a 1M × 16384 float matrix is 64 GB),
  each chunk a flat index of random unit vectors (exact search costs the same whatever the values); IVF-PQ is
  built and searched whole on tools/benchmark/scale_benchmark.py's synthetic 256-D descriptors, with its R@1
  against exact search on them;
- recall on the study's test split: R@1/R@5 (mean over seeds) of the study's own models, from the run folders:
  the baselines' training tests and the `scalability` experiment's eval.py runs with --pca_dim / --index, and
  the change against the NetVLAD baseline (its full descriptor, flat index). A row the study did not evaluate
  (e.g. PCA 4096 on a world with fewer training images) has null recall.
Timings are measured once (scale/timings.json) and reused; the recalls are read again at every call.
The sizes are those of plan.json's "scale_sizes" (the recipe's; tests use small ones), else SIZES.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

SIZES = (10_000, 100_000, 1_000_000)
QUERIES = 100
SEARCH_K = 5
CHUNK_BYTES = 256 * 2 ** 20
REPEAT_BUDGET_S = 2.0  # a flat search is repeated (best time kept) while its repeats took less than this
RECALL_NS = ("1", "5")
# name, label, descriptor dim, index kind, study source: ("train", experiment/variant) or ("eval", eval id)
ROWS = (("gem256", "GeM 256-D", 256, "flat", ("train", "baseline_gem/gem")),
        ("netvlad16k", "NetVLAD 16384-D", 16384, "flat", ("train", "baseline_netvlad/netvlad")),
        ("netvlad_pca4096", "NetVLAD, PCA 4096", 4096, "flat", ("eval", "netvlad_pca4096")),
        ("netvlad_pca1024", "NetVLAD, PCA 1024", 1024, "flat", ("eval", "netvlad_pca1024")),
        ("netvlad_pca256", "NetVLAD, PCA 256", 256, "flat", ("eval", "netvlad_pca256")),
        ("netvlad_ivfpq", "NetVLAD, PCA 256, IVF-PQ", 256, "ivfpq", ("eval", "netvlad_ivfpq")))
REFERENCE = "netvlad16k"


def time_flat(dim: int, sizes: list[int], rng: np.random.Generator) -> dict[str, float]:
    """ms per query of exact search over N random unit vectors of dim, for each N, in chunks."""
    from retrieval.indexing import build_index, search
    chunk = min(max(sizes), max(1, CHUNK_BYTES // (4 * dim)))
    base = rng.standard_normal((chunk, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[rng.choice(chunk, QUERIES, replace=chunk < QUERIES)]
    out = {}
    for n in sizes:
        index = build_index(base[:min(n, chunk)], "flat")
        search(index, queries, SEARCH_K)  # warm-up: threads started, memory touched
        best, spent = math.inf, 0.0
        while best == math.inf or spent < REPEAT_BUDGET_S:
            start = time.perf_counter()
            for _ in range(math.ceil(n / chunk)):
                search(index, queries, SEARCH_K)
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
        out[str(n)] = best * 1000 / QUERIES
    return out


def measure_ivfpq(sizes: list[int]) -> dict[str, dict]:
    """IVF-PQ over the scale benchmark's synthetic 256-D descriptors: index bytes, ms/query, R@1 vs flat."""
    from tools.benchmark.scale_benchmark import make_descriptors, make_settings, measure
    setting = make_settings(256, 512)[0]
    out = {}
    for n in sizes:
        database, queries, source = make_descriptors(setting, n, QUERIES, seed=0)
        flat, ivf = (measure(database, queries, source, kind) for kind in ("flat", "ivfpq"))
        out[str(n)] = {"bytes": ivf["index_mb"] * 2 ** 20, "ms_per_query": ivf["ms_per_query"],
                       "r1_lost_vs_flat": round(flat["r1"] - ivf["r1"], 2)}
    return out


def timings(folder: Path, sizes: list[int]) -> dict:
    """Index memory and search time of every row (measured once, then read from folder/timings.json)."""
    path = folder / "timings.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("sizes") == sizes and cached.get("queries") == QUERIES:
            return cached
    rng = np.random.default_rng(0)
    flat = {dim: time_flat(dim, sizes, rng) for dim in sorted({r[2] for r in ROWS if r[3] == "flat"})}
    rows = {}
    for name, _, dim, kind, _ in ROWS:
        if kind == "flat":
            rows[name] = {"memory_bytes": {str(n): n * dim * 4 for n in sizes}, "search_ms": flat[dim]}
    ivf = measure_ivfpq(sizes)
    rows["netvlad_ivfpq"] = {"memory_bytes": {n: v["bytes"] for n, v in ivf.items()},
                             "search_ms": {n: v["ms_per_query"] for n, v in ivf.items()},
                             "synthetic_r1_lost_vs_flat": {n: v["r1_lost_vs_flat"] for n, v in ivf.items()}}
    from study.status import machine
    result = {"sizes": sizes, "queries": QUERIES, "machine": machine(), "rows": rows}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _results(folder: Path) -> dict | None:
    """results.json of the newest finished run folder directly under folder."""
    found = sorted(folder.glob("*/results.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def study_recalls(study: Path, plan: dict) -> dict[str, dict]:
    """Row name -> {"R@1": mean, "R@5": mean, "seeds": n} on the study's test split (absent rows: not run)."""
    out = {}
    for name, _, _, _, (kind, source) in ROWS:
        values: dict[str, list[float]] = {n: [] for n in RECALL_NS}
        for seed in plan["seeds"]:
            if kind == "train":
                res = _results(study / "runs" / f"{source}_s{seed}")
                recalls = (res or {}).get("test", {}).get("recalls")
            else:
                recalls = ((_results(study / "evals" / "scalability" / f"netvlad_s{seed}" / source) or {})
                           .get("recalls"))
            for n in RECALL_NS:
                if recalls and recalls.get(n) is not None:
                    values[n].append(float(recalls[n]))
        if values["1"]:
            out[name] = {**{f"R@{n}": _mean(v) for n, v in values.items()}, "seeds": len(values["1"])}
    return out


def study_dims(study: Path, plan: dict) -> dict[str, int]:
    """Descriptor size of the study's GeM and NetVLAD baselines (built from their args on the meta device)."""
    import torch
    from network import build_model
    dims = {}
    for name, source in (("gem256", "baseline_gem/gem"), ("netvlad16k", "baseline_netvlad/netvlad")):
        res = _results(study / "runs" / f"{source}_s{plan['seeds'][0]}")
        if res:
            with torch.device("meta"):
                dims[name] = int(build_model({**res["args"], "pretrain": "none"}).out_dim)
    return dims


def build_rows(study: Path, plan: dict, measured: dict) -> list[dict]:
    """The rows of results.json: measurements, recalls and recall changes against the NetVLAD baseline."""
    recalls, dims = study_recalls(study, plan), study_dims(study, plan)
    largest = str(measured["sizes"][-1])
    ref = recalls.get(REFERENCE, {})
    rows = []
    for name, label, dim, kind, _ in ROWS:
        m = measured["rows"][name]
        rec = recalls.get(name)
        change = {f"R@{n}": None if not rec or ref.get(f"R@{n}") is None else rec[f"R@{n}"] - ref[f"R@{n}"]
                  for n in RECALL_NS}
        row = {"name": name, "label": label, "dim": dim, "index": kind,
               "bytes_per_image": m["memory_bytes"][largest] / int(largest),
               "memory_mb": {n: b / 2 ** 20 for n, b in m["memory_bytes"].items()},
               "search_ms_per_query": m["search_ms"],
               "study_recall": {k: (rec or {}).get(k) for k in ("R@1", "R@5")},
               "recall_change_vs_netvlad": change, "study_seeds": (rec or {}).get("seeds", 0),
               "study_dim": dims.get(name, dim if name not in ("gem256", "netvlad16k") else None)}
        if "synthetic_r1_lost_vs_flat" in m:
            row["synthetic_r1_lost_vs_flat"] = m["synthetic_r1_lost_vs_flat"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Write STUDY/scale/results.json; argv: [STUDY]."""
    study = Path((argv if argv is not None else sys.argv[1:])[0])
    plan = json.loads((study / "plan.json").read_text())
    measured = timings(study / "scale", sorted(plan.get("scale_sizes") or SIZES))
    result = {"sizes": measured["sizes"], "queries": measured["queries"], "machine": measured["machine"],
              "reference": "the study's NetVLAD baseline: full descriptor, flat index",
              "notes": [line.strip() for line in __doc__.split("\n\n")[1].splitlines()],
              "rows": build_rows(study, plan, measured)}
    (study / "scale" / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {study / 'scale' / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
