"""report.py: a tiny study run by study.py → report.pdf; every experiment's section is there, its numbers equal the
collector's CSV, an experiment that did not run reads 'missing', user text is escaped; plus the pure helpers."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from pypdf import PdfReader

from commons import run_cli
from report import heatmaps, markup, scale
from report.folder import Experiment, read_table
from report.results import status_line
from report.tables import latex_table


def load_cli(name: str):
    """The top-level script name.py as a module (the packages report/ and study/ own the plain names)."""
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_cli, study_cli = load_cli("report"), load_cli("study")
TRICKY = 'Radius_#1: *bold* $m$ [@x] <y> "q" \\ back -- flag'  # typst/LaTeX special characters
PLAN = f"""
[recipes.tiny]
train_dataset = "synthetic"
transfer_dataset = "synthetic_transfer"
train = \"\"\"--resize 32 32 --pretrain none --lr 1e-3 --train_batch_size 4 --negs_num_per_query 2 --neg_samples_num 20
  --cache_refresh_rate 8 --queries_per_epoch 8 --epochs_num 1 --infer_batch_size 32 --num_workers 0 --device cpu\"\"\"
eval = "--infer_batch_size 32 --num_workers 0 --device cpu"
[recipes.tiny.worlds]
train = {{ style = "city", seed = 0, image_size = 32, map_size = 512, train = [60, 30], val = [20, 10], test = [40, 20] }}
transfer = {{ style = "suburb", seed = 1, image_size = 32, map_size = 512, test = [40, 20] }}

[[experiment]]
name = "baseline_gem"
part = "baseline"
title = "Baseline: GeM"
question = "GeM?"
varies = ["aggregation"]
eval = [{{ id = "test", flags = "--save_predictions 2 --recall_thresholds 10 25 50" }}]
variant = [{{ key = "gem", label = "GeM", train = "--aggregation gem" }}]

[[experiment]]
name = "baseline_netvlad"
part = "baseline"
title = "Baseline: NetVLAD"
question = "NetVLAD?"
varies = ["aggregation"]
eval = [{{ id = "transfer", flags = "--dataset_name {{transfer_dataset}}" }}]
variant = [{{ key = "netvlad", label = "NetVLAD", train = "--aggregation netvlad --netvlad_clusters 4" }}]

[[experiment]]
name = "eval_threshold"
part = "ablation"
title = '{TRICKY}'
question = "Radius?"
varies = ["val_positive_dist_threshold"]
eval = [{{ id = "thr50", flags = "--val_positive_dist_threshold 50" }}]
variant = [{{ key = "gem", label = "GeM", checkpoints = ["baseline_gem/gem"] }}]

[[experiment]]
name = "never_ran"
part = "variation"
title = "Never ran"
question = "Nothing?"
varies = ["mining"]
variant = [{{ key = "full", label = "full", train = "--mining full" }}]
"""
SCALE = {"sizes": [10000, 1000000], "notes": ["measured", "on synthetic descriptors"], "rows": [  # study/scale.py's
    {"name": "netvlad16k", "label": "NetVLAD 16384-D", "dim": 16384, "search_ms_per_query": {"1000000": 812.5},
     "recall_change_vs_netvlad": {"R@1": 0.0}},
    {"name": "gem256", "label": "GeM 256-D", "dim": 256, "search_ms_per_query": {"1000000": 12.25},
     "recall_change_vs_netvlad": {"R@1": -3.5}}]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """A tiny study run by study.py (baseline_gem and eval_threshold over two seeds; baseline_netvlad and never_ran
    are planned but not run) with a scale/results.json as study/scale.py writes it, and the whitespace-normalized
    text of its report.pdf."""
    root = tmp_path_factory.mktemp("study")
    (root / "plan.toml").write_text(PLAN)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # the runs are tiny subprocesses: one thread each wastes nothing
        assert study_cli.main(["--plan", str(root / "plan.toml"), "--recipe", "tiny", "--out", str(root / "study"),
                               "--seeds", "0", "1", "--only", "baseline_gem", "eval_threshold"]) == 0
    (root / "study" / "scale" / "results.json").parent.mkdir()
    (root / "study" / "scale" / "results.json").write_text(json.dumps(SCALE))
    pdf = report_cli.main([str(root / "study")])
    text = "\n".join(page.extract_text() for page in PdfReader(pdf).pages)
    return root / "study", re.sub(r"\s+", " ", text)


def section(text: str, title: str, next_title: str | None) -> str:
    """The report text from the numbered heading of title (the last one: the outline comes first) to the next."""
    start = [m.end() for m in re.finditer(r"\d+\.\d+\.\d+ " + re.escape(title), text)][-1]
    end = [m.start() for m in re.finditer(r"\d+\.\d+\.\d+ " + re.escape(next_title), text)][-1] if next_title \
        else len(text)
    return text[start:end]


def markdown_rows(path: Path) -> list[dict[str, str]]:
    """The rows of the collector's results.md as {column: cell}."""
    lines = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in path.read_text().splitlines()]
    return [dict(zip(lines[0], cells)) for cells in lines[2:]]


def test_every_experiment_section_holds_the_collectors_numbers(built):
    root, text = built
    titles = [e["title"] for e in json.loads((root / "plan.json").read_text())["experiments"]]
    for i, name in ((0, "baseline_gem"), (2, "eval_threshold")):
        body = section(text, titles[i], titles[i + 1]).replace("\xa0", " ")
        table = read_table(root / "summary" / name / "results.csv")
        md_rows = markdown_rows(root / "summary" / name / "results.md")
        assert len(md_rows) == len(table.rows) >= 1
        for row, md in zip(table.rows, md_rows):
            cells = [md[c] or "missing" for c in table.metrics]
            for c in (c for c in table.metrics if row[c]):  # the collector's markdown shows the CSV's numbers
                assert md[c].split(" ")[0] == (f"{float(row[c]):g}" if c == "epochs" else f"{float(row[c]):.1f}")
            assert " ".join(cells + [row["runs"]]) in body
        assert "± " in " ".join(md_rows[0].values())  # two seeds: mean ± std


def test_missing_experiments_and_escaped_text(built):
    _, text = built
    for body in (section(text, "Baseline: NetVLAD", TRICKY), section(text, "Never ran", None)):
        assert "Results: missing." in body and "2 planned, 0 done, 2 not run" in body
    assert "netvlad: R@1 missing on synthetic, missing on synthetic_transfer" in text  # in the answers
    assert TRICKY in text
    assert "GeM 256-D" in text and "12.25" in text and "812.5" in text and "-3.5" in text  # scale/results.json
    assert "measured on synthetic descriptors" in text
    assert "no experiment of this study varies --criterion: missing" in text


def test_status_line_escapes_errors():
    exp = Experiment("x", "X", "variation", "?", [], [{"key": "a_s0"}, {"key": "b_s0", "reference": True}],
                     states={"a_s0": {"state": "failed", "error": "error: [x] *y* $z$"}})
    assert status_line(exp) == ('#"Runs: 1 planned, 0 done, 1 failed, plus 1 reference runs of other experiments";'
                                ' (first error: #"error: [x] *y* $z$";).\n')


def test_report_files(built):
    root, _ = built
    out = root / "report"
    assert {"report.typ", "report.pdf", "refs.bib"} <= {p.name for p in out.iterdir()}
    assert {p.name for p in (out / "tables").iterdir()} == {"baseline_gem.tex", "eval_threshold.tex"}
    figures = {p.name for p in (out / "figures").iterdir()}
    assert "heatmap_gem.png" in figures and "heatmap_netvlad.png" not in figures  # NetVLAD did not run
    assert (out / "figures" / "recall_vs_threshold.png").is_file()


def test_latex_table_escapes_and_rules(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text("run,seeds,lr,d_1 R@1,d_1 R@1 std,d_1 R@5,d_1 R@10,runs\nx_1,0 1,0.001,50.0,2.5,60.0,,2\n")
    tex = latex_table(read_table(csv))
    assert r"\multicolumn{3}{c}{d\_1}" in tex and r"\cmidrule(lr){2-4}" in tex
    assert r"0.001 & 50.0~$\pm$~2.5 & 60.0 (n=1) & missing & 2 \\" in tex  # 1 of 2 runs has R@5
    assert tex.startswith(r"\begin{tabular}{lrrrr}") and r"\bottomrule" in tex


def test_typst_string_escaping():
    assert markup.esc('a"b\\c\n') == '#"a\\"b\\\\c\\n";'
    assert markup.string("x_y") == '"x_y"'


def test_scale_reader_flattens_and_orders(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": {"netvlad_ivfpq": {"dim": 64, "ms": {"10000": 0.5}},
                                         "gem256": {"label": "GeM", "dim": 256, "ms": {"10000": 0.1, "1000000": 9}}},
                                "notes": "synthetic", "sizes": [10000, 1000000]}))
    t = scale.read_scale(path)
    assert [r[0] for r in t.rows] == ["gem256", "netvlad_ivfpq"] and t.notes == "synthetic"
    assert t.columns == ["dim", "ms @ 10k", "ms @ 1M"] and t.value("gem256", "1M") == 9
    assert t.sizes == ["10k", "1M"] and t.key_columns() == ["dim", "ms @ 1M"]
    assert scale.cell(None) == "missing" and scale.cell(0.123456) == "0.1235"


def test_activation_energy_is_channel_norm_scaled():
    class Stub(torch.nn.Module):
        def features(self, x):  # B×3×H×W → B×2×2×2: channels (1, 0) at (0,0), (3, 4) at (1,1), zero elsewhere
            f = torch.zeros(x.shape[0], 2, 2, 2)
            f[:, 0, 0, 0], f[:, 0, 1, 1], f[:, 1, 1, 1] = 1.0, 3.0, 4.0
            return f
    energy = heatmaps.activation_energy(Stub(), torch.zeros(1, 3, 2, 2))  # no upsampling at 2×2
    assert torch.allclose(energy, torch.tensor([[[0.2, 0.0], [0.0, 1.0]]]))
    assert heatmaps.pick([(0, True), (1, False), (2, True), (3, True), (4, False), (5, False)]) == \
        [(0, True), (2, True), (1, False), (4, False)]


def test_bad_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(report_cli.main, [str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "no plan.json" in err
