"""benchmark.py: the --quick run writes every documented figure, limits are computed as documented."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tools.benchmark import run as benchmark
from tools.benchmark.limits import LimitSampler, figure, gemm_call, model_conv_calls
from commons import UserError

RATE_FIGURES = ("extract", "model", "train", "train_model")
CACHE_FIGURES = ("refresh_s", "forward_s", "loading_s", "mining_s", "other_fraction")


def test_quick_run_writes_the_documented_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    returned = benchmark.main(["--quick", "--out", "bench.json", "--device", "cpu"])
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data == json.loads(json.dumps(returned))
    assert set(data) == {"machine", "config", "limits", "figures", "notes"}
    assert data["config"]["quick"] and data["config"]["precisions"] == ["fp32", "bf16"]
    assert data["machine"]["device"] == "cpu" and len(data["machine"]["load_average"]) == 3
    limits, figs = data["limits"], data["figures"]
    assert set(limits["matmul_flops_per_s"]) == set(limits["gemm_flops_per_s"]) == {"fp32", "bf16"}
    assert all(limits["matmul_flops_per_s"][p] == max(r.values()) for p, r in limits["gemm_flops_per_s"].items())
    expected = {"loader", "peak_memory"}
    for agg in ("gem", "netvlad"):
        assert limits["forward_flops_per_image"][agg] > 0 and limits["train_flops_per_triplet"][agg] > 0
        expected |= {f"cache.{agg}.{k}" for k in CACHE_FIGURES}
        expected |= {f"search.{agg}", f"model_nchw.{agg}.fp32"}  # CPU: prepare_model uses channels_last
        for prec in ("fp32", "bf16"):
            expected |= {f"{k}.{agg}.{prec}" for k in RATE_FIGURES}
            # limit = matmul rate / FLOPs per item, ratio = measured / limit
            img = figs[f"extract.{agg}.{prec}"]
            assert img["limit"] == pytest.approx(limits["matmul_flops_per_s"][prec]
                                                 / limits["forward_flops_per_image"][agg])
            assert img["ratio"] == pytest.approx(img["value"] / img["limit"])
            tri = figs[f"train.{agg}.{prec}"]
            assert tri["limit"] == pytest.approx(limits["matmul_flops_per_s"][prec]
                                                 / limits["train_flops_per_triplet"][agg])
        cache = {k: figs[f"cache.{agg}.{k}"]["value"] for k in CACHE_FIGURES}
        assert cache["other_fraction"] == pytest.approx(max(0.0, 1 - cache["forward_s"] / cache["refresh_s"]))
    assert set(figs) == expected
    for name, f in figs.items():
        lower = 0.0 if name.endswith(("loading_s", "other_fraction")) else 1e-12
        assert f["value"] >= lower and f["unit"], name
        assert f["limit"] is None or f["limit"] > 0, name
    table = capsys.readouterr().out
    assert all(name in table for name in figs)


def test_count_flops_equals_a_hand_count_of_the_convolutions() -> None:
    """GeM has no matrix products: forward FLOPs = sum over convolutions of 2·Cin/groups·k²·Cout·H'·W'."""
    args = benchmark.train_args(benchmark.parse_args(["--quick", "--resize", "32", "48"]), "gem", "fp32", 0)
    model, total = benchmark.make_model(args, "cpu"), []

    def hook(conv: torch.nn.Conv2d, _inputs, out: torch.Tensor) -> None:
        kh, kw = conv.kernel_size
        total.append(2 * conv.in_channels // conv.groups * kh * kw * out.shape[1] * out.shape[2] * out.shape[3])
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 48))
    assert benchmark.count_flops(args, 1, step=False) == sum(total)
    # a training step also runs the backward pass, but never through the frozen blocks' weights
    images = args.train_batch_size * (2 + args.negs_num_per_query)
    assert images * sum(total) < benchmark.count_flops(args, images, step=True) < 3 * images * sum(total)


@pytest.mark.parametrize("kernel", ["matmul", "conv1x1"])
def test_both_gemm_kernels_do_2_n_cubed_flops(kernel: str) -> None:
    with FlopCounterMode(display=False) as counter:
        gemm_call(kernel, 64, torch.float32, "cpu")()
    assert counter.get_total_flops() == 2 * 64 ** 3


def test_figure_ratio_is_the_share_of_the_limit_reached() -> None:
    assert figure(30.0, "img/s", 40.0)["ratio"] == pytest.approx(0.75)
    assert figure(8.0, "s", 6.0, rate=False)["ratio"] == pytest.approx(0.75)
    assert figure(1.0, "img/s")["ratio"] is None


@pytest.mark.parametrize("flags", [["--precisions", "fp16", "--device", "cpu"], ["--quick", "--images", "0"],
                                   ["--quick", "--num_workers", "-1"], ["--quick", "--cache_db", "1"]])
def test_bad_flags_are_one_line_user_errors(flags: list[str]) -> None:
    with pytest.raises(UserError) as e:
        benchmark.parse_args(flags)
    assert "\n" not in str(e.value)


def test_workers_run_adds_inline_extraction_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --num_workers > 0, extraction is also measured with loading in the main process, the refresh uses the
    faster of the two, and a note says so when the main process is faster."""
    monkeypatch.chdir(tmp_path)
    data = benchmark.main(["--quick", "--device", "cpu", "--precisions", "fp32", "--aggregations", "gem",
                           "--num_workers", "1"])
    figs, s = data["figures"], data["config"]
    inline, workers = figs["extract_inline.gem.fp32"]["value"], figs["extract.gem.fp32"]["value"]
    n = s["cache_db"] + s["cache_queries"]
    refresh = figs["cache.gem.refresh_s"]["value"] - figs["cache.gem.mining_s"]["value"]
    assert refresh == pytest.approx(n / max(inline, workers))
    assert (inline > workers) == any(note.startswith("extract.gem.fp32: loading in the main process")
                                     for note in data["notes"])
    assert figs["cache.gem.refresh_s"]["unit"] == f"s (fp32, {0 if inline > workers else 1}w)"


def test_interleaved_best_takes_turns_and_keeps_each_best() -> None:
    calls: list[tuple[str, bool]] = []
    values = {"a": iter([0.0, 3.0, 5.0, 4.0]), "b": iter([0.0, 7.0, 1.0, 2.0])}  # warm-up value first

    def run(name: str):
        return lambda warmup: (calls.append((name, warmup)), next(values[name]))[1]
    between: list[int] = []
    best = benchmark.interleaved_best({"a": run("a"), "b": run("b")}, {"warmup": True, "repeats": 3},
                                      lambda: between.append(1))
    assert best == {"a": 5.0, "b": 7.0}
    assert calls == [("a", True), ("b", True)] + [("a", False), ("b", False)] * 3
    assert len(between) == 6  # a limit sample before every timed run


def test_limit_sampler_keeps_the_best_rate_seen() -> None:
    sampler = LimitSampler("cpu", ["fp32"], max_n=256, call_s=0.0)
    assert {k: [flops for _, flops in calls] for k, calls in sampler.calls["fp32"].items()} == {
        "matmul": [2 * 256 ** 3], "conv1x1": [2 * 256 ** 3]}
    sampler.rates["fp32"]["matmul"] = 1e30  # a rate no machine reaches: a new sample must not lower it
    sampler.rates["fp32"]["conv1x1"] = 1.0  # one every machine beats
    sampler.sample("fp32")
    assert sampler.rates["fp32"]["matmul"] == 1e30 and sampler.rates["fp32"]["conv1x1"] > 1.0
    assert sampler.best() == {"fp32": 1e30}


def test_model_conv_calls_are_the_models_distinct_conv_shapes_with_their_flops() -> None:
    """One call per distinct convolution shape; their FLOPs add up to count_flops' forward FLOPs once each
    shape is counted as often as the model runs it."""
    args = benchmark.train_args(benchmark.parse_args(["--quick", "--resize", "32", "48"]), "gem", "fp32", 0)
    model = benchmark.make_model(args, "cpu")
    runs: dict[tuple, int] = {}

    def hook(conv: torch.nn.Conv2d, inputs: tuple, _out: torch.Tensor) -> None:
        key = (tuple(inputs[0].shape), conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.groups)
        runs[key] = runs.get(key, 0) + 1
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    x = torch.zeros(2, 3, 32, 48).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    calls = model_conv_calls(model, x, "fp32", "cpu")
    assert len(calls) == len(runs)
    assert sum(flops * n for (_, flops), n in zip(calls, runs.values())) == 2 * benchmark.count_flops(args, 1, False)
    assert all(call().shape[0] == 2 for call, _ in calls)


def test_the_limit_covers_the_models_own_convolutions() -> None:
    sampler = LimitSampler("cpu", ["fp32"], max_n=256, call_s=0.0)
    args = benchmark.train_args(benchmark.parse_args(["--quick"]), "gem", "fp32", 0)
    sampler.add_model("fp32", benchmark.make_model(args, "cpu"), torch.randn(2, 3, 32, 32), repeats=1)
    rates = sampler.rates["fp32"]
    assert set(rates) == {"matmul", "conv1x1", "model_conv"} and rates["model_conv"] > 0
    assert sampler.best()["fp32"] == max(rates.values())


def test_a_quick_run_fails_when_a_figure_beats_its_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A limit that the program beats is not a limit: the figure is flagged, and --quick exits non-zero."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(LimitSampler, "best", lambda self: {p: 1.0 for p in self.rates})  # 1 FLOP/s: beaten
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--quick", "--device", "cpu", "--precisions", "fp32", "--aggregations", "gem"])
    assert e.value.code == 1
    out = capsys.readouterr()
    assert "note: warning: model.gem.fp32 is at" in out.out and out.err.startswith("error: ")
    assert any(n.startswith("warning: ") for n in json.loads((tmp_path / "bench.json").read_text())["notes"])


def test_end_to_end_mode_profiles_a_real_epoch_and_estimates_pitts30k(tmp_path: Path, monkeypatch) -> None:
    """--end_to_end runs train.py in its own process; its table and estimate follow from the stored profile."""
    from tools.benchmark import end_to_end
    monkeypatch.chdir(tmp_path)
    out = benchmark.main(["--quick", "--end_to_end", "--precisions", "fp32", "--aggregations", "gem",
                          "--device", "cpu", "--out", "e2e.json"])
    assert json.loads((tmp_path / "e2e.json").read_text()) == json.loads(json.dumps(out))
    run, cached = out["end_to_end"]
    assert (run["source"], cached["source"]) == ("JPEG files", "pixel cache") and "--pixel_cache" in cached["flags"]
    ph, r = run["time_profile"]["phases"], end_to_end.RUN["quick"]
    rows = {row["phase"]: row for row in run["rows"]}
    # encoding limit = the phase's images at the in-memory forward rate; training at the in-memory step rate
    assert rows["mining: encoding"]["images"] == r["database"] + r["queries"]  # full mining: database + queries
    assert rows["mining: encoding"]["limit_s"] == pytest.approx(ph["mining/encode"]["images"] / run["rates"]["forward"])
    assert rows["training: compute"]["images"] == r["queries"] * (2 + r["negs"])
    assert rows["training: compute"]["limit_s"] == pytest.approx(rows["training: compute"]["images"]
                                                                 / run["rates"]["train"])
    assert rows["epoch (mining + training)"]["s"] == pytest.approx(ph["mining"]["s"] + ph["training"]["s"])
    around = (ph["mining"]["s"] + ph["training"]["s"]) - ph["mining/encode/forward"]["s"] - ph["training/compute"]["s"]
    assert end_to_end.around_model_s(ph) == pytest.approx(around) and around >= ph["training/data"]["s"]
    assert rows["whole process"]["s"] >= run["time_profile"]["total_s"]  # the process outlives its profile
    # Pitts30k, full mining: 5 refreshes × (10000 database + 1000 queries) images at the run's encoding rate
    full = run["pitts30k"]["full"]
    encode_rate = ph["mining/encode"]["images"] / ph["mining/encode"]["s"]
    assert full["cache encoding"] == pytest.approx(5 * 11000 / encode_rate / 60)
    assert full["training"] == pytest.approx(5000 * 12 / (ph["training/compute"]["images"] / ph["training"]["s"]) / 60)
    assert run["pitts30k"]["rolling"]["cache encoding"] == pytest.approx((10000 + 4 * 2500 + 5000) / encode_rate / 60)
    assert full["total"] == pytest.approx(sum(v for k, v in full.items() if k != "total"))
    # with 1 negative per query: 3 images per query, at the run's rate scaled by the two in-memory step rates
    one = run["pitts30k"]["full, 1 negative"]
    assert end_to_end.FEWER_NEGS == 1 and run["rates"]["train_fewer_negs"] > 0
    assert one["training"] == pytest.approx(full["training"] * 3 / 12 * run["rates"]["train"]
                                            / run["rates"]["train_fewer_negs"])
    assert {k: v for k, v in one.items() if k not in ("training", "total")} == \
        {k: v for k, v in full.items() if k not in ("training", "total")}
    assert run["flags"][run["flags"].index("--pretrain") + 1] == "imagenet"  # the default recipe: layers frozen


def test_stand_in_imagenet_weights_make_train_py_freeze_as_with_imagenet(tmp_path: Path, monkeypatch) -> None:
    """The end-to-end epoch's model is built as with ImageNet weights, offline: the stand-in file is where
    torchvision looks, so --pretrain imagenet loads it (its values) and freezes conv1 to layer2; layer3 trains."""
    from tools.benchmark import end_to_end
    from model.backbones import build_backbone
    end_to_end.stand_in_imagenet_weights(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (stored,) = (tmp_path / "hub" / "checkpoints").iterdir()
    state = torch.load(stored)
    bb = build_backbone(end_to_end.BACKBONE, "imagenet", "gem")
    trains = {name.split(".")[0] for name, p in bb.net.named_parameters() if p.requires_grad}
    assert trains == {"6"}  # conv1, bn1, relu, maxpool, layer1, layer2 (children 0-5) frozen; layer3 (6) trains
    assert torch.equal(bb.net[0].weight, state["conv1.weight"])
