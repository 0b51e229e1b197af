"""Tests of retrieval/indexing.py (faiss index kinds, search, descriptor storage) and the scale benchmark CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss loads OpenMP (see retrieval/indexing.py)

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tools.benchmark import scale_benchmark  # noqa: E402
from commons import UserError  # noqa: E402
from retrieval.indexing import (INDEX_KINDS, DescriptorWriter, build_index, default_params, open_descriptors,  # noqa: E402
                      search)

faiss.omp_set_num_threads(2)


def save_descriptors(path: Path, array: np.ndarray, dtype: str = "float16") -> None:
    """Write array N×D through DescriptorWriter in chunks of 300 rows, as localize.py's index does."""
    with DescriptorWriter(path, array.shape[0], array.shape[1], dtype) as writer:
        for start in range(0, len(array), 300):
            writer.write(array[start:start + 300])


def brute_force_knn(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact squared-L2 kNN in float64 numpy: (Q×k distances, Q×k ids)."""
    d2 = ((queries[:, None, :].astype(np.float64) - database[None, :, :]) ** 2).sum(-1)  # Q×N
    ids = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d2, ids, axis=1), ids


@pytest.fixture(scope="module")
def structured() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20k × 64 clustered, L2-normalized database; 300 noisy queries and their source rows."""
    setting = scale_benchmark.Setting("t", "test", 64, 1.0, 0.3, 0.45)
    return scale_benchmark.make_descriptors(setting, 20000, 300, seed=3)


def test_flat_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    database = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    distances, ids = search(build_index(database, "flat"), queries, 7)
    ref_d, ref_ids = brute_force_knn(database, queries, 7)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(distances, ref_d, rtol=1e-4, atol=1e-4)
    assert ids.dtype == np.int64


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_recall_close_to_flat(structured, kind: str) -> None:
    database, queries, source = structured
    _, flat_ids = search(build_index(database, "flat"), queries, 5)
    _, ids = search(build_index(database, kind), queries, 5)
    flat_r1 = (flat_ids[:, 0] == source).mean()
    r1 = (ids[:, 0] == source).mean()
    assert 0.6 < flat_r1 < 1.0  # the set is hard enough for the comparison to mean something
    assert r1 >= flat_r1 - 0.03, (kind, r1, flat_r1)
    assert (ids[:, 0] == flat_ids[:, 0]).mean() > 0.95  # same top-1 as the exact index, not just same recall


def test_ivfpq_build_is_deterministic_and_restores_threads(structured) -> None:
    database, queries, _ = structured
    threads = faiss.omp_get_max_threads()
    runs = [search(build_index(database[:8000], "ivfpq"), queries[:50], 5) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert faiss.omp_get_max_threads() == threads  # PQ training runs on one thread, then restores the count


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_search_shapes_and_k_clipping(kind: str) -> None:
    rng = np.random.default_rng(1)
    database = rng.standard_normal((300, 32)).astype(np.float32)
    index = build_index(database, kind)
    distances, ids = search(index, database[:11], 4)
    assert distances.shape == ids.shape == (11, 4) and ids.dtype == np.int64
    assert (ids[:, 0] == np.arange(11)).all()  # a database vector is its own nearest neighbour
    distances, ids = search(index, database[:5], 1000)  # k > N: clipped, every id is a real row
    assert ids.shape == (5, 300)
    assert ids.min() >= 0 and all(len(set(row)) == 300 for row in ids)
    assert (np.diff(distances, axis=1) >= -1e-5).all()


def test_ivfpq_and_hnsw_never_return_missing_ids_for_large_k() -> None:
    rng = np.random.default_rng(2)
    database = rng.standard_normal((3000, 32)).astype(np.float32)
    for kind, params in (("ivfpq", {"nprobe": 1, "k_factor": 1}), ("hnsw", {"ef_search": 8})):
        _, ids = search(build_index(database, kind, **params), database[:20], 500)
        assert ids.shape == (20, 500) and ids.min() >= 0, kind


def test_float16_round_trip_and_memmap(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    array = rng.standard_normal((1000, 24)).astype(np.float32)
    save_descriptors(tmp_path / "db.npy", array, dtype="float16")
    loaded = open_descriptors(tmp_path / "db.npy")
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float16 and loaded.shape == (1000, 24)
    np.testing.assert_allclose(loaded.astype(np.float32), array, rtol=1e-3, atol=1e-3)
    assert not np.array_equal(loaded.astype(np.float32), array)  # it really is float16
    assert np.load(tmp_path / "db.npy", mmap_mode="r").shape == (1000, 24)
    save_descriptors(tmp_path / "db32.npy", array, dtype="float32")
    in_ram = open_descriptors(tmp_path / "db32.npy", mmap=False)
    assert not isinstance(in_ram, np.memmap)
    np.testing.assert_array_equal(in_ram, array)


def test_descriptor_writer_chunks_equal_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    array = rng.standard_normal((1037, 8)).astype(np.float32)
    with DescriptorWriter(tmp_path / "w.npy", 1037, 8, "float32") as writer:
        for start in range(0, 1000, 100):
            writer.write(array[start:start + 100])
        writer.write(array[1000:], start=1000)
    np.testing.assert_array_equal(open_descriptors(tmp_path / "w.npy"), array)
    with pytest.raises(UserError):
        DescriptorWriter(tmp_path / "x.npy", 10, 8, "float32").write(array[:11])


def test_build_index_on_memmap(tmp_path: Path, structured) -> None:
    database, queries, _ = structured
    save_descriptors(tmp_path / "db.npy", database[:5000], dtype="float16")
    mm = open_descriptors(tmp_path / "db.npy")
    as_f32 = mm.astype(np.float32)
    for kind in INDEX_KINDS:
        index = build_index(mm, kind)
        assert index.ntotal == 5000
        _, ids = search(index, as_f32[:50], 1)
        assert (ids[:, 0] == np.arange(50)).mean() >= 0.96, kind


def test_errors() -> None:
    database = np.zeros((10, 4), dtype=np.float32)
    with pytest.raises(UserError, match="unknown index kind"):
        build_index(database, "annoy")
    with pytest.raises(UserError, match="unknown ivfpq index parameter"):
        build_index(database, "ivfpq", nprobes=3)
    with pytest.raises(UserError, match="dimension"):
        search(build_index(database, "flat"), np.zeros((2, 5), dtype=np.float32), 1)
    with pytest.raises(UserError):
        open_descriptors("/nonexistent/db.npy")


def test_defaults_scale_with_database() -> None:
    small, big = default_params("ivfpq", 20000, 256), default_params("ivfpq", 1_000_000, 256)
    assert small["nlist"] * 39 <= 20000 and big["nlist"] > small["nlist"] and big["nprobe"] >= small["nprobe"]
    assert 256 % big["m"] == 0
    assert default_params("hnsw", 1_000_000, 512)["storage"] == "float16"
    assert default_params("hnsw", 20000, 64)["storage"] == "float32"


def test_scale_benchmark_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    scale_benchmark.main(["--quick", "--sizes", "2000", "--dim", "32", "--pca_dim", "64", "--queries", "100",
                          "--out", str(out)])
    results = json.loads(out.read_text())
    assert set(results) >= {"config", "machine", "settings", "targets", "results"}
    rows = results["results"]
    assert {(r["setting"], r["kind"]) for r in rows} == {(s, k) for s in ("gem", "netvlad_pca") for k in INDEX_KINDS}
    keys = {"setting", "label", "dim", "n", "queries", "kind", "params", "build_s", "index_mb", "rss_delta_mb",
            "peak_build_mb", "ms_per_query", "cpu_ms_per_query", "r1", "r5", "r1_lost_vs_flat", "r5_lost_vs_flat",
            "meets_targets"}
    for r in rows:
        assert keys <= set(r), keys - set(r)
        assert r["n"] == 2000 and 0 <= r["r1"] <= r["r5"] <= 100 and r["ms_per_query"] > 0 and r["index_mb"] > 0
    flat = [r for r in rows if r["kind"] == "flat"]
    assert all(r["r1_lost_vs_flat"] == 0 for r in flat) and all(50 < r["r1"] < 100 for r in flat)
