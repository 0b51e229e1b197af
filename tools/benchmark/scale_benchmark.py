"""Scale benchmark of the faiss index kinds on synthetic descriptor databases.

python -m benchmarks.scale_benchmark [--sizes 100000 1000000] [--dim 256] [--quick] [--out results.json]

Synthetic data (see `make_descriptors`): a Gaussian mixture of "places" (~50 database images each) whose
centres and within-place offsets follow a decaying PCA-like spectrum, L2-normalized; each query is a noisy,
re-normalized copy of one random database item, and only that item counts as correct (R@N = the source is
among the top N). Two settings: 256-D GeM-like, and NetVLAD reduced by PCA to 512-D - the latter is
generated directly at 512-D (a 1M x 16384 NetVLAD matrix cannot be materialized here), i.e. it emulates
the PCA output, not the PCA itself.

Per (setting, size, kind): build time, index size (serialized faiss index, a proxy for its RAM), RSS growth
of the process across the build and its peak, latency (one batched search of all queries, k=5, wall time /
queries, 2 faiss threads), R@1 / R@5 and the points of R@1 / R@5 lost against the flat index.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss loads OpenMP; see retrieval/indexing.py
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from retrieval.indexing import INDEX_KINDS, build_index, default_params, index_nbytes, search  # noqa: E402

TARGET_MS, TARGET_MB, TARGET_R1_LOSS = 2.0, 2048.0, 1.0  # at 1M: < 2 ms/query, < 2 GB, <= 1 point of R@1
SEARCH_K = 5


@dataclass(frozen=True)
class Setting:
    """One synthetic descriptor family: dimension, spectrum decay and noise levels."""
    name: str
    label: str
    dim: int
    alpha: float  # within-space variance of component j ~ j^-alpha (PCA-like decay)
    spread: float  # within-place offset scale, relative to place centres of norm ~1
    noise: float  # query noise scale (same spectrum); sets the exact-search R@1 (~0.93-0.96 at 1M)


def make_settings(dim: int, pca_dim: int) -> list[Setting]:
    """The GeM-like and NetVLAD+PCA-like settings."""
    return [Setting("gem", f"GeM-like {dim}-D", dim, 1.0, 0.3, 0.4),
            Setting("netvlad_pca", f"NetVLAD 16384-D -> PCA {pca_dim}-D (generated at {pca_dim}-D)",
                    pca_dim, 0.8, 0.3, 0.6)]


def make_descriptors(setting: Setting, n: int, n_queries: int, seed: int,
                     per_place: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic database (n x D float32), queries (Q x D float32) and each query's source row (Q int64).

    Generated in chunks so that the database is the only full-size array.
    """
    rng = np.random.default_rng(seed)
    d = setting.dim
    spectrum = np.arange(1, d + 1, dtype=np.float64) ** (-setting.alpha / 2)
    spectrum /= np.linalg.norm(spectrum)  # E|z @ mix|^2 = 1
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    mix = (spectrum[:, None] * rotation).astype(np.float32)  # D x D
    places = max(1, n // per_place)
    centres = rng.standard_normal((places, d), dtype=np.float32) @ mix
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    place_of = rng.integers(0, places, n)
    database = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        x = centres[place_of[start:stop]] + setting.spread * (rng.standard_normal((stop - start, d),
                                                                                  dtype=np.float32) @ mix)
        database[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    source = rng.choice(n, size=min(n, n_queries), replace=False).astype(np.int64)
    queries = database[source] + setting.noise * (rng.standard_normal((len(source), d), dtype=np.float32) @ mix)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return database, queries.astype(np.float32), source


def _proc_kb(field: str) -> float:
    """A Vm* field (VmRSS, VmHWM, ...) of /proc/self/status in kB (0 where unavailable)."""
    try:
        match = re.search(rf"^{field}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return 0.0
    return float(match.group(1)) if match else 0.0


def _load_average() -> float | None:
    """1-minute CPU load average (None where unavailable): other processes slow the wall-clock figures."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM (peak RSS) to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(database: np.ndarray, queries: np.ndarray, source: np.ndarray, kind: str) -> dict[str, Any]:
    """Build one index kind over database and measure it (see the module docstring)."""
    rss0 = _proc_kb("VmRSS")
    peak_ok = _reset_peak_rss()
    start = time.perf_counter()
    index = build_index(database, kind)
    build_s = time.perf_counter() - start
    rss_delta_mb = (_proc_kb("VmRSS") - rss0) / 1024
    peak_mb = round((_proc_kb("VmHWM") - rss0) / 1024, 1) if peak_ok else None  # None: kernel refused
    start, cpu_start = time.perf_counter(), time.process_time()
    _, ids = search(index, queries, SEARCH_K)
    ms_per_query = (time.perf_counter() - start) * 1000 / len(queries)
    cpu_ms_per_query = (time.process_time() - cpu_start) * 1000 / len(queries)
    hits = ids == source[:, None]
    result = {"kind": kind, "params": default_params(kind, *database.shape), "build_s": round(build_s, 2),
              "index_mb": round(index_nbytes(index) / 2 ** 20, 1), "rss_delta_mb": round(rss_delta_mb, 1),
              "peak_build_mb": peak_mb, "ms_per_query": round(ms_per_query, 4),
              "cpu_ms_per_query": round(cpu_ms_per_query, 4),
              "r1": round(100 * float(hits[:, 0].mean()), 2), "r5": round(100 * float(hits.any(1).mean()), 2)}
    del index
    return result


def run_setting(setting: Setting, n: int, kinds: list[str], n_queries: int, seed: int) -> list[dict[str, Any]]:
    """All kinds on one synthetic database; the flat index (if listed) is measured first as the reference."""
    database, queries, source = make_descriptors(setting, n, n_queries, seed)
    rows = []
    for kind in sorted(kinds, key=lambda k: k != "flat"):
        row = {"setting": setting.name, "label": setting.label, "dim": setting.dim, "n": n,
               "queries": len(queries), **measure(database, queries, source, kind)}
        rows.append(row)
        print(f"  {setting.name} N={n} {kind}: {row['build_s']} s build, {row['ms_per_query']} ms/query, "
              f"R@1 {row['r1']}", flush=True)
    flat = next((r for r in rows if r["kind"] == "flat"), None)
    for row in rows:
        row["r1_lost_vs_flat"] = round(flat["r1"] - row["r1"], 2) if flat else None
        row["r5_lost_vs_flat"] = round(flat["r5"] - row["r5"], 2) if flat else None
        row["meets_targets"] = bool(row["ms_per_query"] < TARGET_MS and row["index_mb"] < TARGET_MB
                                    and (row["r1_lost_vs_flat"] or 0.0) <= TARGET_R1_LOSS)
    return rows


def format_table(rows: list[dict[str, Any]], threads: int, load: tuple[float | None, float | None]) -> str:
    """The printed results table, with the notes needed to read it."""
    head = (f"{'setting':<12}{'N':>9} {'kind':<6}{'build s':>9}{'index MB':>10}{'RSS+ MB':>9}{'peak+ MB':>9}"
            f"{'ms/query':>10}{'cpu ms/q':>9}{'R@1':>7}{'R@5':>7}{'dR@1':>7}{'dR@5':>7}  targets")
    lines = [head, "-" * len(head)]
    for r in rows:
        lost1 = "" if r["r1_lost_vs_flat"] is None else f"{r['r1_lost_vs_flat']:.2f}"
        lost5 = "" if r["r5_lost_vs_flat"] is None else f"{r['r5_lost_vs_flat']:.2f}"
        lines.append(f"{r['setting']:<12}{r['n']:>9} {r['kind']:<6}{r['build_s']:>9.1f}{r['index_mb']:>10.1f}"
                     f"{r['rss_delta_mb']:>9.1f}{r['peak_build_mb'] or float('nan'):>9.1f}{r['ms_per_query']:>10.3f}"
                     f"{r['cpu_ms_per_query']:>9.3f}"
                     f"{r['r1']:>7.2f}{r['r5']:>7.2f}{lost1:>7}{lost5:>7}  {'ok' if r['meets_targets'] else '-'}")
    labels = sorted({f"{r['setting']}: {r['label']}" for r in rows})
    lines += [""] + labels + [
        "index MB = serialized faiss index size (its RAM footprint); RSS+ / peak+ = growth of the process "
        "resident set across the build, after / at its peak (includes training buffers; glibc may keep freed pages)",
        f"ms/query = wall time of one batched search of all queries (k={SEARCH_K}) / queries, {threads} faiss "
        "threads; cpu ms/q = process CPU time of that search / queries (robust to other load on the machine)",
        f"CPU load average (1 min) at start / end: {load[0]} / {load[1]} on {os.cpu_count()} cores; "
        "dR@N = points lost vs flat",
        f"targets: < {TARGET_MS} ms/query, index < {TARGET_MB / 1024:.0f} GB, <= {TARGET_R1_LOSS} point of R@1 "
        "lost vs flat (stated for 1M x 256-D)"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="database sizes (default 100000 1000000; --quick: 20000 50000)")
    p.add_argument("--dim", type=int, default=256, help="GeM-like descriptor dimension")
    p.add_argument("--pca_dim", type=int, default=512, help="emulated NetVLAD PCA dimension")
    p.add_argument("--settings", nargs="+", choices=["gem", "netvlad_pca"], default=["gem", "netvlad_pca"])
    p.add_argument("--kinds", nargs="+", choices=INDEX_KINDS, default=list(INDEX_KINDS))
    p.add_argument("--queries", type=int, default=None, help="number of queries (default 1000; --quick: 500)")
    p.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small sizes for CI (well under a minute)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [20000, 50000] if args.quick else [100000, 1000000]
    if args.queries is None:
        args.queries = 500 if args.quick else 1000
    if min(args.sizes) < 1 or args.queries < 1 or args.dim < 1 or args.pca_dim < 1:
        p.error("--sizes, --queries, --dim and --pca_dim must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table, write JSON (--out) and return the results.

    JSON: {"config": {...the options...}, "machine": {cpu_count, load_average_start_end}, "settings": [Setting...],
    "targets": {...}, "results": [{setting, label, dim, n, queries, kind, params, build_s, index_mb, rss_delta_mb,
    peak_build_mb, ms_per_query, cpu_ms_per_query, r1, r5, r1_lost_vs_flat, r5_lost_vs_flat, meets_targets}...]}.
    """
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    settings = [s for s in make_settings(args.dim, args.pca_dim) if s.name in args.settings]
    rows: list[dict[str, Any]] = []
    load_start = _load_average()
    for setting in settings:
        for n in args.sizes:
            rows += run_setting(setting, n, args.kinds, args.queries, args.seed)
    load = (load_start, _load_average())
    print(format_table(rows, args.threads, load))
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": {"cpu_count": os.cpu_count(), "load_average_start_end": load},
               "settings": [asdict(s) for s in settings],
               "targets": {"ms_per_query": TARGET_MS, "index_mb": TARGET_MB, "r1_lost_vs_flat": TARGET_R1_LOSS},
               "results": rows}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
