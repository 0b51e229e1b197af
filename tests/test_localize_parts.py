"""The pieces of localize.py on their own: UTM <-> lat/lon, positions from names, confidence and its evaluation,
the index folder with IVF-PQ, the self-contained index.html."""
from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from commons import UserError
from localization import confidence as conf
from localization.geo import check_zone, latlon_to_utm, parse_zone, positions_of, utm_to_latlon, zone_of
from localization.html import write_html
from localization.index import IndexKey, open_index
from localization.photos import Encoder
from retrieval.evaluation import InferenceConfig

# (lat, lon) -> (zone, easting, northing). The CN Tower is the worked example of Wikipedia's "Universal Transverse
# Mercator coordinate system" article (43°38′33.24″N 79°23′13.7″W: 17T 630084 4833438, rounded to the metre);
# the others were computed with PROJ 9 (pyproj 3.7.2, EPSG:4326 -> EPSG:326zz/327zz), not a dependency of the
# project. Bergen and Longyearbyen test the Norway and Svalbard zone exceptions, Quito and Sydney the south.
KNOWN = [((43 + 38 / 60 + 33.24 / 3600, -(79 + 23 / 60 + 13.7 / 3600)), (17, "T"), (630084, 4833438), 1.0),
         ((-33.8568, 151.2153), (56, "H"), (334900.5697, 6252288.7529), 1e-3),
         ((40.4406, -79.9959), (17, "T"), (585156.9623, 4477145.4200), 1e-3),
         ((-22.9068, -43.1729), (23, "K"), (687394.5933, 7465634.1277), 1e-3),
         ((60.3913, 5.3221), (32, "V"), (297353.9327, 6700648.3452), 1e-3),
         ((78.2232, 15.6267), (33, "X"), (514278.7151, 8683355.4695), 1e-3),
         ((-0.1807, -78.4678), (17, "M"), (781861.4575, 9980007.5669), 1e-3)]


@pytest.mark.parametrize("latlon, zone, utm, tol", KNOWN)
def test_known_points(latlon, zone, utm, tol) -> None:
    lat, lon = np.array([latlon[0]]), np.array([latlon[1]])
    number, band = zone_of(lat, lon)
    assert (int(number[0]), str(band[0])) == zone
    e, n, _ = latlon_to_utm(lat, lon)
    assert abs(e[0] - utm[0]) <= tol and abs(n[0] - utm[1]) <= tol, (e, n)
    back_lat, back_lon = utm_to_latlon(np.array([utm[0]]), np.array([utm[1]]), zone[0], zone[1] >= "N")
    tol_deg = 2 * tol / 111_000 / np.cos(np.radians(lat[0]))  # 1° of latitude ≈ 111 km
    assert abs(back_lat[0] - lat[0]) < tol_deg and abs(back_lon[0] - lon[0]) < tol_deg


def test_central_meridian_and_equator() -> None:
    """On a central meridian the northing is 0.9996 × the meridian arc: 4 984 944.378 m from the equator to 45°N on
    WGS84 (textbook value); the equator on a central meridian is (500000, 0), southern: (500000, 10000000)."""
    e, n, zone = latlon_to_utm(np.array([45.0, 0.0, -1e-12]), np.array([-81.0, 3.0, 3.0]))
    assert zone.tolist() == [17, 31, 31]
    np.testing.assert_allclose(e, 500000.0, atol=1e-6)
    np.testing.assert_allclose(n, [0.9996 * 4984944.378, 0.0, 10000000.0], atol=2e-3)


def test_round_trip_within_a_millimetre() -> None:
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-79, 83, 2000), rng.uniform(-180, 180, 2000)
    e, n, zone = latlon_to_utm(lat, lon)
    back_lat, back_lon = utm_to_latlon(e, n, zone, lat >= 0)
    e2, n2, _ = latlon_to_utm(back_lat, back_lon, zone)
    assert np.abs(e2 - e).max() < 1e-3 and np.abs(n2 - n).max() < 1e-3


def test_zones_are_parsed_and_checked() -> None:
    assert parse_zone("17T") == (17, "T") and parse_zone("05 s") == (5, "S") and parse_zone("60X") == (60, "X")
    for bad in ("test", "61T", "0T", "17I", "17O", "17", "T", ""):
        assert parse_zone(bad) is None, bad
    assert check_zone(None) is None
    with pytest.raises(UserError, match="--utm_zone '17I' is no UTM zone"):
        check_zone("17I")


def test_positions_from_datasets_vg_names(tmp_path: Path) -> None:
    names = ["@0584291.21@4476924.92@17@T@40.44321@-80.00012@pano@.jpg",  # lat/lon fields win
             "@0585156.96@4477145.42@17@T@@@.jpg",  # zone only: converted from UTM
             "@0500010.00@4400020.00@test@db@00012@123.45@.jpg"]  # synthetic: fields 3-6 are no zone/lat/lon
    pos = positions_of([tmp_path / n for n in names])
    np.testing.assert_allclose(pos.utm, [[584291.21, 4476924.92], [585156.96, 4477145.42], [500010.0, 4400020.0]])
    assert pos.zone == ["17T", "17T", ""] and pos.latlon_source == ["name", "utm", ""]
    np.testing.assert_allclose(pos.latlon[0], [40.44321, -80.00012])
    np.testing.assert_allclose(pos.latlon[1], [40.4406, -79.9959], atol=1e-6)  # KNOWN Pittsburgh point
    assert np.isnan(pos.latlon[2]).all()
    with_zone = positions_of([tmp_path / names[2]], default_zone=(17, "T"))
    assert with_zone.zone == ["17T"]
    np.testing.assert_allclose(latlon_to_utm(*with_zone.latlon.T, 17)[:2], [[500010.0], [4400020.0]], atol=1e-3)
    with pytest.raises(UserError, match="names must look like"):
        positions_of([tmp_path / "IMG_0001.jpg"])


def test_confidence_definitions_by_hand() -> None:
    d2 = np.array([[1.0, 4.0, 9.0], [4.0, 4.0, 4.0], [0.0, 0.0, 0.0]])  # squared L2
    np.testing.assert_allclose(conf.ratio_confidence(d2, 3), [1 - 1 / 3, 0.0, 0.0])
    np.testing.assert_allclose(conf.ratio_confidence(d2, 2), [0.5, 0.0, 0.0])
    utm = np.array([[[0, 0], [10, 0], [0, 30], [3, 4]],
                    [[0, 0], [100, 0], [0, 100], [50, 50]]], dtype=np.float64)  # Q×K×2
    np.testing.assert_allclose(conf.agreement_confidence(utm, 4, 25.0), [2 / 3, 0.0])
    np.testing.assert_allclose(conf.agreement_confidence(utm, 2, 25.0), [1.0, 0.0])


def test_average_precision_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, 60) / 4  # many ties, like the agreement score
        correct = rng.random(60) < 0.4
        assert conf.average_precision(scores, correct) == pytest.approx(average_precision_score(correct, scores))
    assert conf.average_precision(np.array([0.5]), np.array([False])) == 0.0


def test_precision_at_thresholds_and_coverage_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    errors = np.array([5.0, 40.0, 10.0, 20.0, 300.0])  # correct within 25 m: T F T T F
    rows = conf.precision_at(scores, errors <= 25, [0.0, 0.5, 0.85, 0.95])
    assert [(r["coverage"], r["precision"]) for r in rows[:3]] == [(1.0, 0.6), (0.6, 2 / 3), (0.2, 1.0)]
    assert rows[3]["coverage"] == 0.0 and np.isnan(rows[3]["precision"])
    by_cov = conf.precision_at_coverage(scores, errors <= 25, [0.4, 0.2])  # 0.4: the tie at 0.8 keeps 3
    assert [(r["threshold"], r["coverage"]) for r in by_cov] == [(0.8, 0.6), (0.9, 0.2)]
    coverage, precision = conf.precision_curve(scores, errors <= 25)
    np.testing.assert_allclose(coverage, [0.2, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(precision, [1.0, 2 / 3, 3 / 4, 3 / 5])
    result = conf.evaluate({"a": scores, "b": -errors}, errors, 25.0)
    assert result["best"] == "b" and result["definitions"]["b"]["average_precision"] == 1.0
    assert result["top1_precision"] == 0.6 and "| 50% |" in conf.markdown_table(result)


class _Links(HTMLParser):
    """Every src/href attribute and tag of a page."""

    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]


def test_html_is_self_contained(tmp_path: Path) -> None:
    picture = tmp_path / "p.jpg"
    Image.new("RGB", (1400, 200), (200, 30, 30)).save(picture)
    match = {"rank": 1, "file": "a<b>.jpg", "easting": 500010.0, "northing": 4400000.0, "latitude": None,
             "longitude": None, "descriptor_distance": 0.5}
    ok = {"photo": "x/p.jpg", "status": "ok", "easting": 500010.0, "northing": 4400000.0, "utm_zone": "",
          "latitude": None, "longitude": None, "confidence": 0.75, "true_easting": 500000.0,
          "true_northing": 4400000.0, "error_m": 10.0, "matches": [match]}
    recs = [ok, {**ok, "photo": "y.jpg"}, {"photo": "bad.jpg", "status": "error", "message": "cannot decode"}]
    db = np.array([[500000.0, 4400000.0], [500100.0, 4400300.0]])
    page = write_html(tmp_path / "index.html", recs, db, [picture], "test <page>", max_photos=2).read_text()
    links = _Links()
    links.feed(page)
    assert links.urls and all(u.startswith("data:image/jpeg;base64,") for u in links.urls)
    assert "http" not in page and "link" not in links.tags  # nothing fetched, no stylesheet or font links
    assert links.tags.count("img") == 1 and page.count('class="pred"') == 2 and page.count('class="db"') == 2
    assert "a&lt;b&gt;.jpg" in page and "test &lt;page&gt;" in page and "bad.jpg: cannot decode" in page


def test_ivfpq_index_appends_then_rebuilds(tiny_world: Path, tmp_path: Path) -> None:
    """An IVF-PQ index folder: built, appended to (encoding only the new images), rebuilt after a removal."""
    db, folder = tmp_path / "db", tmp_path / "index"
    shutil.copytree(tiny_world / "synthetic/images/test/database", db)
    pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())  # B×3×32×32 -> B×48
    encoder = Encoder(pool, (32, 32), InferenceConfig(64))
    key = IndexKey("pool", "0" * 64, (32, 32))
    open_db = lambda: open_index(folder, db, key, "ivfpq", encoder, None, False)  # noqa: E731
    first = open_db()
    assert (first.encoded, first.index.ntotal, first.descriptors.dtype) == (80, 80, np.float16)
    new = sorted((tiny_world / "synthetic/images/val/database").iterdir())[:10]
    for p in new:
        shutil.copy(p, db / p.name)
    added = open_db()
    assert (added.encoded, added.index.ntotal, encoder.encoded) == (10, 90, 90)
    row = added.files.index(new[0].name)
    _, ids = added.index.search(np.asarray(added.descriptors[row:row + 1], dtype=np.float32), 1)
    assert ids[0, 0] == row  # faiss row i is descriptor row i
    (db / new[0].name).unlink()
    removed = open_db()
    assert (removed.encoded, removed.index.ntotal, len(removed.files)) == (0, 89, 89)
    assert new[0].name not in removed.files and encoder.encoded == 90
