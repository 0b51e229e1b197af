"""Localize new photos: where was each photo taken, according to its nearest geo-tagged database images?

Example: python localize.py --resume logs/default/<run>/best_model.pth --database DIR photo1.jpg photo2.jpg
         python localize.py --resume CKPT --database DIR --queries FOLDER --index hnsw
The database (images named '@<easting>@<northing>@<zone number>@<zone letter>@<lat>@<lon>@...', datasets_vg) is
encoded once into an index folder and reused; only new database images are encoded later. Each run writes
predictions.csv, predictions.geojson, pictures/, map.png and index.html into logs/<save_dir>/<timestamp>/.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path

from commons import UserError, make_deterministic, run_cli, setup_logging, tune_allocator
from eval import load_trained_model
from localization import confidence as conf
from localization import outputs
from localization.geo import check_zone
from localization.html import write_html
from localization.index import IndexKey, file_sha256, open_index
from localization.photos import Encoder, collect_photos
from retrieval.evaluation import InferenceConfig
from localization.predict import Predictions, predict, unique_rows
from parser import _check, _reparse, _runtime_args, _with_device_defaults, resolve_device
from util import load_checkpoint, log_args, new_run_folder, write_json


def localize_parser() -> argparse.ArgumentParser:
    """Parser of localize.py (runtime flags shared with train.py/eval.py)."""
    p = argparse.ArgumentParser(description="Localize photos against a database of geo-tagged images",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("photos", nargs="*", metavar="PHOTO", help="photo files, or folders of photos (recursively)")
    g = p.add_argument_group("localization")
    g.add_argument("--resume", required=True, metavar="CKPT", help="checkpoint (best_model.pth of a train.py run)")
    g.add_argument("--database", required=True, metavar="DIR", help="folder of geo-tagged database images")
    g.add_argument("--queries", metavar="DIR", help="a folder of photos to localize (with or instead of PHOTO...)")
    g.add_argument("--index_dir", metavar="DIR", help="index folder; default logs/localize_index/<database>-<hash>")
    g.add_argument("--top_n", type=int, default=5, help="database matches reported per photo")
    g.add_argument("--confidence", choices=conf.DEFINITIONS, default=conf.DEFAULT_DEFINITION,
                   help="confidence definition (README: Localizing new photos)")
    g.add_argument("--confidence_k", type=int, default=5, help="matches the confidence looks at (top-k)")
    g.add_argument("--radius", type=float, default=25.0,
                   help="metres: agreement radius of the confidence; success radius on labelled photos")
    g.add_argument("--utm_zone", default=None, help="UTM zone of database names that carry none, e.g. 17T")
    g.add_argument("--resize", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="image size; default: the checkpoint's test size (480 640 if it has none)")
    g.add_argument("--max_pictures", type=int, default=None, help="prediction pictures written (default: all)")
    g.add_argument("--html_max_photos", type=int, default=200, help="photos shown in index.html")
    g.add_argument("--skip_corrupt", action="store_true", help="skip unreadable database images with a warning")
    _runtime_args(p)
    p.set_defaults(save_dir="localize")
    return p


def parse_localize_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate; --resize defaults to the size the checkpoint was tested at."""
    p = localize_parser()
    args = p.parse_args(argv)
    _check(args.photos or args.queries, "no photo given; pass photo files or folders, or --queries <folder>")
    _check(args.top_n > 0, f"--top_n must be > 0, got {args.top_n}")
    _check(args.confidence_k >= 2, f"--confidence_k must be >= 2 matches, got {args.confidence_k}")
    _check(args.radius > 0, f"--radius must be > 0 metres, got {args.radius}")
    _check(args.html_max_photos >= 0, f"--html_max_photos must be >= 0, got {args.html_max_photos}")
    _check(args.max_pictures is None or args.max_pictures >= 0, "--max_pictures must be >= 0")
    _check(args.infer_batch_size > 0, "--infer_batch_size must be > 0")
    check_zone(args.utm_zone)
    if args.resize is None:
        stored = load_checkpoint(args.resume)["args"]
        args = _reparse(p, argv, resize=stored.get("test_resize") or stored.get("resize") or [480, 640])
    _check(all(v > 0 for v in args.resize), f"--resize must be positive, got {args.resize}")
    args = _with_device_defaults(p, args, argv)
    _check(args.num_workers >= 0, "--num_workers must be >= 0")
    _check(not (args.precision == "fp16" and resolve_device(args) == "cpu"),
           "--precision fp16 needs CUDA; on CPU use --precision bf16 or fp32")
    return args


def default_index_dir(database: str) -> Path:
    """logs/localize_index/<database folder name>-<8 hex digits of its absolute path>."""
    root = Path(database).resolve()
    return Path("logs") / "localize_index" / f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"


def print_answers(recs: list[dict]) -> None:
    """Log each photo's answer: position, confidence, then its matches, one per line."""
    for r in recs:
        if r["status"] != "ok":
            continue
        geo = f" = lat {r['latitude']:.6f}, lon {r['longitude']:.6f}" if r["latitude"] is not None else ""
        zone = f" ({r['utm_zone']})" if r["utm_zone"] else ""
        truth = f", error {r['error_m']:.1f} m" if "error_m" in r else ""
        logging.info(f"{r['photo']}: E {r['easting']:.2f} N {r['northing']:.2f}{zone}{geo}, confidence "
                     f"{r['confidence']:.3f}{truth}")
        for m in r["matches"]:
            logging.info(f"    #{m['rank']} {m['file']}  E {m['easting']:.2f} N {m['northing']:.2f}  "
                         f"descriptor distance {m['descriptor_distance']:.4f}")


def write_outputs(folder: Path, pred: Predictions, db, recs: list[dict], args) -> dict:
    """predictions.csv/.geojson, pictures, map.png, index.html; confidence evaluation on labelled photos."""
    out = {"csv": str(outputs.write_csv(folder / "predictions.csv", recs, pred.top_n))}
    out["geojson_lonlat"] = outputs.write_geojson(folder / "predictions.geojson", recs)
    pictures = outputs.save_pictures(pred, db, folder / "pictures", args.radius, args.max_pictures)
    outputs.plot_map(folder / "map.png", pred, db)
    write_html(folder / "index.html", recs, db.positions.utm, pictures[:args.html_max_photos],
               f"localize.py: {Path(args.database).name}", args.html_max_photos)
    if pred.truth is not None and len(pred.photos) >= conf.MIN_LABELLED_PHOTOS:
        errors = pred.errors_m()[:, 0]  # Q metres, top-1
        out["recall_at_1"] = float(100 * (errors <= args.radius).mean())
        result = conf.evaluate(pred.scores, errors, args.radius)
        write_json(folder / "confidence.json", result)
        outputs.plot_confidence(folder / "confidence.png", result)
        logging.info(f"labelled photos: top-1 within {args.radius:g} m for {out['recall_at_1']:.2f} %; confidence "
                     f"definitions compared (best: {result['best']}):\n{conf.markdown_table(result)}")
        out["confidence_eval"] = result
    logging.info(f"wrote predictions.csv, predictions.geojson, {len(pictures)} pictures, map.png and index.html to "
                 f"{folder}")
    return out


def main(argv: list[str] | None = None) -> dict:
    """Localize the photos; returns the per-photo records and a summary (also in results.json)."""
    args = parse_localize_args(argv)
    tune_allocator()
    folder = new_run_folder(args.save_dir)
    setup_logging(folder, args.log_level)
    log_args(args, folder)
    make_deterministic(args.seed)
    device = resolve_device(args)
    photos = collect_photos(args.photos, args.queries)
    if not photos.paths:
        raise UserError(f"nothing to localize: none of the {len(photos.errors)} inputs is a readable photo (see the "
                        f"lines above); pass photo files or folders of photos")
    resize = (int(args.resize[0]), int(args.resize[1]))
    encoder = Encoder(load_trained_model(args.resume, device, args.precision), resize,
                      InferenceConfig(args.infer_batch_size, args.num_workers, device, args.precision, args.index))
    index_dir = Path(args.index_dir) if args.index_dir else default_index_dir(args.database)
    key = IndexKey(str(args.resume), file_sha256(args.resume), resize)
    db = open_index(index_dir, Path(args.database), key, args.index, encoder, check_zone(args.utm_zone),
                    args.skip_corrupt)
    distinct, inverse = unique_rows(photos.paths)
    start, start_cpu = time.perf_counter(), time.process_time()
    feats = encoder.encode(distinct, "localizing photos")[inverse]  # Q×D
    encode_s, encode_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    pred = predict(db, feats, photos.paths, args.top_n, args.confidence_k, args.radius, args.confidence)
    total_s = encode_s + pred.search_seconds
    logging.info(f"localized {len(photos.paths)} photos in {total_s:.2f} s ({len(photos.paths) / total_s:.1f} "
                 f"photos/s): encoding {encode_s:.2f} s ({encode_cpu_s:.2f} s of CPU, {len(distinct)} distinct "
                 f"photos), search {pred.search_seconds:.4f} s")
    recs = outputs.records(pred, db)
    print_answers(recs)
    summary = {"index_dir": str(index_dir), "database_images": len(db.files), "database_encoded": db.encoded,
               "index_seconds": db.seconds, "photos": len(photos.paths), "errors": len(photos.errors),
               "encode_seconds": encode_s, "encode_cpu_seconds": encode_cpu_s, "search_seconds": pred.search_seconds,
               "photos_per_s": len(photos.paths) / total_s, "run_folder": str(folder),
               **write_outputs(folder, pred, db, recs + outputs.error_records(photos.errors), args)}
    write_json(folder / "results.json", summary)
    return {**summary, "records": recs + outputs.error_records(photos.errors)}


if __name__ == "__main__":
    run_cli(main)
