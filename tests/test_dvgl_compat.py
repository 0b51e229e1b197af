"""The field's command lines run unchanged (issue 16): every train.py / eval.py command line of the VG benchmark's README
(dVGL) and of the course skeleton's README (project_vg) is parsed by this project's parsers on a generated world with
tiny sizes; each is accepted with dVGL's meaning or refused with one line naming the equivalent. Then the flags and
notes behind them, eval.py without --resume, and architecture flags checked against a checkpoint (the model pieces:
tests/test_dvgl_models.py).
"""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

import eval as eval_cli
from commons import UserError, run_cli, set_stop_hint
from network import build_model
from parser import parse_eval_args, parse_train_args, startup_notes

# ----------------------------------------------------------------------------------------- the corpus (data)
DVGL = "gmberton/deep-visual-geo-localization-benchmark README.md (commit 723850a)"
PROJECT_VG = "gmberton/project_vg README.md (commit 521b72b)"
PROJECT_VG_FORK = "gmberton/project_vg README.md (stored version 2ba54e2, a fork's 'NetVLAD training commands')"
RUN = "logs/default/YYYY-MM-DD_HH-mm-ss/best_model.pth"
RADENOVIC_FILE = "data/off_the_shelf_nets/gl18-tl-resnet101-gem-w-a4d43db.pth"
NAVER_FILE = "data/off_the_shelf_nets/resnet101conv5_naver.pth"
PLACES_FILE = "data/pretrained_nets/resnet18_places.pth"

# (source, command line copied verbatim, expected): a dict of argument values (accepted; "notes": start-up notes that
# must be logged), ("refused", text the one-line error must contain), or ("help", None).
CORPUS = [
    (DVGL, "python3 train.py --dataset_name=pitts30k",
     {"backbone": "resnet18conv4", "notes": ["--aggregation gem", "dVGL's is netvlad", "--mining full"]}),
    (DVGL, "python3 train.py --dataset_name=pitts30k --backbone=resnet50conv4 --aggregation=gem",
     {"backbone": "resnet50conv4", "aggregation": "gem", "notes": ["--l2 after_pool", "dVGL's is before_pool"]}),
    (DVGL, "python3 train.py --dataset_name=pitts30k --backbone=resnet50conv4 --aggregation=gem --fc_output_dim=2048",
     {"backbone": "resnet50conv4", "aggregation": "gem", "fc_output_dim": 2048}),
    (DVGL, "python3 eval.py --dataset_name=pitts30k --backbone=resnet50conv4 --aggregation=netvlad --pca_dim=2048 "
           "--pca_dataset_folder=pitts30k/images/train",
     {"resume": None, "backbone": "resnet50conv4", "aggregation": "netvlad", "pca_dim": 2048, "pca_split": "train"}),
    (DVGL, f"python3 eval.py --backbone=resnet50conv4 --aggregation=gem --resume={RUN} --dataset_name=st_lucia",
     {"backbone": "resnet50conv4", "aggregation": "gem", "resume": [RUN]}),
    (DVGL, "python3 train.py --dataset_name=pitts30k --mining=full", {"mining": "full"}),
    (DVGL, "python3 train.py --dataset_name=pitts30k --resize=384 512", {"resize": [384, 512]}),
    (DVGL, f"python3 eval.py --resume={RUN} --dataset_name=tokyo247 --test_method=nearest_crop",
     {"resume": [RUN], "test_method": "nearest_crop"}),
    (DVGL, "python3 train.py --dataset_name=pitts30k --horizontal_flipping --saturation 2 --brightness 1",
     {"horizontal_flip": 0.5, "saturation": 2.0, "brightness": 1.0}),
    (DVGL, "python eval.py --off_the_shelf=radenovic_gldv1 --l2=after_pool --backbone=r101l4 --aggregation=gem "
           "--fc_output_dim=2048", ("refused", RADENOVIC_FILE)),
    (DVGL, "python eval.py --dataset_name=pitts30k --off_the_shelf=naver --l2=none --backbone=r101l4 --aggregation=gem "
           "--fc_output_dim=2048", ("refused", NAVER_FILE)),
    (DVGL, "python train.py --dataset_name=pitts30k --pretrained=places", ("refused", PLACES_FILE)),
    (DVGL, f"python3 eval.py --resume={RUN} --val_positive_dist_threshold=100", {"val_positive_dist_threshold": 100.0}),
    (DVGL, f"python3 eval.py --resume={RUN} --recall_values 1 5 10 15 20 50 100",
     {"recall_values": [1, 5, 10, 15, 20, 50, 100]}),
    (PROJECT_VG, "python3 train.py --datasets_folder path/to/folder/containing/pitts30k", {"save_dir": "default"}),
    (PROJECT_VG, "python3 train.py -h", ("help", None)),
    (PROJECT_VG_FORK, "python3 project_vg/train.py --datasets_folder ./ --use_netvlad True --netvlad_clusters 64 "
                      "--epochs_num 5", ("refused", "--aggregation netvlad")),
]
# With the weight files in place, the refused lines are accepted with dVGL's meaning.
PLACED = {RADENOVIC_FILE: {"backbone": "resnet101conv5", "l2": "after_pool", "off_the_shelf": "radenovic_gldv1",
                           "fc_output_dim": 2048},
          NAVER_FILE: {"backbone": "resnet101conv5", "l2": "none", "off_the_shelf": "naver"},
          PLACES_FILE: {"pretrain": "places", "backbone": "resnet18conv4"}}


def localize(command: str, world: Path) -> tuple[str, list[str]]:
    """(script, argv): the dataset replaced by the generated world, images made tiny, CPU; every other flag kept."""
    tokens = shlex.split(command)
    script, out, i = Path(tokens[1]).stem, [], 2
    while i < len(tokens):
        name, eq, value = tokens[i].partition("=")
        if not eq and name in ("--dataset_name", "--datasets_folder", "--pca_dataset_folder"):
            value, i = tokens[i + 1], i + 1
        if name in ("--dataset_name", "--datasets_folder"):
            out += [name, "synthetic" if name == "--dataset_name" else str(world)]
        elif name == "--pca_dataset_folder":  # <dataset>/images/<split> of the replaced dataset
            out += [name, str(Path("synthetic", *Path(value).parts[1:]))]
        else:
            out.append(tokens[i])
        i += 1
    return script, ["--datasets_folder", str(world), "--dataset_name", "synthetic", "--resize", "32", "32",
                    "--device", "cpu", *out]


def parse(script: str, argv: list[str]):
    return (parse_train_args if script == "train" else parse_eval_args)(argv)


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch):
    """Runs write logs/ and weight files are looked up under data/, both in a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    yield
    set_stop_hint(None)  # eval.main called directly (not through run_cli) leaves its stop hint registered


@pytest.mark.parametrize("source,command,expected", CORPUS, ids=[c[1][:60] for c in CORPUS])
def test_corpus_command_lines(source: str, command: str, expected, tiny_world: Path, capsys) -> None:
    script, argv = localize(command, tiny_world)
    if isinstance(expected, tuple) and expected[0] == "help":
        with pytest.raises(SystemExit) as e:
            parse(script, argv)
        assert e.value.code == 0 and "--exp_name" in capsys.readouterr().out
        return
    if isinstance(expected, tuple):
        with pytest.raises(UserError) as e:
            parse(script, argv)
        assert expected[1] in str(e.value) and "\n" not in str(e.value), str(e.value)
        return
    args = parse(script, argv)
    expected = dict(expected)
    notes = "\n".join(startup_notes(script, args, argv))
    for text in expected.pop("notes", []):
        assert text in notes, notes
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.dataset_name == "synthetic" and args.datasets_folder == str(tiny_world)


@pytest.mark.parametrize("path", sorted(PLACED))
def test_refused_lines_are_accepted_once_the_file_is_placed(path: str, tiny_world: Path) -> None:
    command = next(c for _, c, e in CORPUS if isinstance(e, tuple) and e[1] == path)
    Path(path).parent.mkdir(parents=True)
    Path(path).write_bytes(b"")  # the parsers check the file is there; reading it is the model's business
    args = parse(*localize(command, tiny_world))
    assert {k: getattr(args, k) for k in PLACED[path]} == PLACED[path]


# ----------------------------------------------------------------------------------------- flags and notes
def train_args(*extra: str):
    return parse_train_args(["--resize", "32", "32", "--device", "cpu", *extra])


def test_aliases_exp_name_lr_crn_and_flip() -> None:
    args = train_args("--exp_name", "course", "--rand_perspective", "0.3", "--lr_crn_layer", "0.005",
                      "--horizontal_flip", "0.25")
    assert (args.save_dir, args.random_perspective, args.attention_lr, args.horizontal_flip) == \
           ("course", 0.3, 0.005, 0.25)
    assert train_args("--horizontal_flip").horizontal_flip == 0.5
    crn = ["--aggregation", "crn", "--lr_crn_net", "0.0005"]
    assert train_args(*crn).lr == 0.0005  # dVGL: the lr of every non-CRN parameter, which is --lr here
    gem = ["--lr_crn_net", "0.0005"]
    assert train_args(*gem).lr == 1e-5  # dVGL ignores it without CRN, and so does this toolkit ...
    assert "--lr_crn_net (only used with --aggregation crn)" in "".join(startup_notes("train", train_args(*gem), gem))
    with pytest.raises(UserError, match="pass one"):  # ... and both spellings of the same lr must agree
        train_args(*crn, "--lr", "0.001")


def test_notes_only_for_defaults_left_unset() -> None:
    argv = ["--aggregation", "netvlad", "--mining", "partial", "--num_workers", "8"]
    assert startup_notes("train", train_args(*argv), argv) == []
    notes = startup_notes("train", train_args(), [])
    assert sum(n.startswith("note: ") for n in notes) == 4  # aggregation, mining, num_workers, l2


def test_train_refuses_eval_only_meanings_naming_the_equivalent() -> None:
    with pytest.raises(UserError, match="eval.py --resume logs/default/<run>/best_model.pth --test_method five_crops"):
        train_args("--test_method", "five_crops")
    with pytest.raises(UserError, match="transformer backbones"):
        train_args("--trunc_te", "4")
    with pytest.raises(UserError, match="--aggregation gem"):
        train_args("--use_gem", "True")
    args = train_args("--pca_dim", "128", "--efficient_ram_testing")  # accepted, and said to have no effect
    line = startup_notes("train", args, ["--pca_dim", "128", "--efficient_ram_testing"])[-1]
    assert "--pca_dim (an eval.py flag)" in line and "--efficient_ram_testing" in line


def test_pca_dataset_folder_maps_to_pca_split_or_names_the_equivalent(tiny_world: Path) -> None:
    base = ["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--device", "cpu", "--pca_dim", "8"]
    assert parse_eval_args(base + ["--pca_dataset_folder", "synthetic/images/val"]).pca_split == "val"
    with pytest.raises(UserError, match="--pca_file"):
        parse_eval_args(base + ["--pca_dataset_folder", "pitts30k/images/train"])


# ----------------------------------------------------------------------------------------- eval.py
def eval_flags(world: Path, *extra: str) -> list[str]:
    return ["--datasets_folder", str(world), "--dataset_name", "synthetic", "--resize", "32", "32", "--device", "cpu",
            "--infer_batch_size", "64", *extra]


def save_checkpoint_of(model: torch.nn.Module, args: dict, path: Path) -> Path:
    torch.save({"model_state_dict": model.state_dict(), "args": args}, path)
    return path


def test_eval_without_resume_is_the_seeded_untrained_model(tiny_world: Path, tmp_path: Path) -> None:
    """eval.py without --resume evaluates the untrained model: the same recalls as a checkpoint of the model built
    from the same seed; the training flags of dVGL's shared parser are accepted and ignored."""
    fresh = eval_cli.main(eval_flags(tiny_world, "--pretrain", "none", "--seed", "3", "--lr", "0.1", "--epochs_num", "2"))
    torch.manual_seed(3)
    ckpt = save_checkpoint_of(build_model({}), {"resize": [32, 32]}, tmp_path / "seed3.pth")
    resumed = eval_cli.main(eval_flags(tiny_world, "--resume", str(ckpt)))
    assert fresh["checkpoint"] is None and fresh["recalls"] == resumed["recalls"]
    logs = [f.read_text() for f in Path("logs/default").glob("*/info.log")]
    assert sum("--epochs_num (a train.py flag); --lr (a train.py flag)" in log for log in logs) == 1


def test_untrained_netvlad_gets_kmeans_clusters(tiny_world: Path) -> None:
    args = parse_eval_args(eval_flags(tiny_world, "--pretrain", "none", "--aggregation", "netvlad",
                                      "--netvlad_clusters", "4"))
    model = eval_cli.untrained_model(args, eval_cli.BaseDataset(tiny_world, "synthetic", "test", (32, 32)), "cpu")
    agg = model.aggregation  # k-means init sets conv weight = 2·alpha·centroid, bias = -alpha·|centroid|²
    alpha = agg.conv.weight[:, 0, 0, 0] / (2 * agg.centroids[:, 0])
    assert torch.allclose(alpha, alpha[0].expand(4), rtol=1e-4)
    assert torch.allclose(agg.conv.bias, -alpha * (agg.centroids ** 2).sum(1), rtol=1e-4)


def test_architecture_flags_checked_against_the_checkpoint(tiny_world: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    ckpt = str(save_checkpoint_of(build_model({}), {"backbone": "resnet18conv4", "aggregation": "gem"},
                                  tmp_path / "gem.pth"))
    same = eval_cli.main(eval_flags(tiny_world, "--resume", ckpt, "--backbone", "resnet18conv4", "--aggregation", "gem",
                                    "--l2", "after_pool", "--netvlad_clusters", "64"))  # matches: no error
    assert same["checkpoint"] == ckpt and set(same["recalls"]) == {"1", "5", "10", "20"}
    set_stop_hint(None)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(eval_cli.main, eval_flags(tiny_world, "--resume", ckpt, "--aggregation", "netvlad", "--l2", "none"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert "--aggregation netvlad given, gem in the checkpoint" in err and "--l2 none given, after_pool" in err
