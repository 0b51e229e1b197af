"""DDP training (torchrun, gloo on CPU, 2 ranks) against a single-process run of the same global batch.

This file is also the torchrun worker: `python -m torch.distributed.run --standalone --nproc_per_node 2
tests/test_ddp.py WORLD OUT` trains with train.main on every rank, then measures the synchronized-BatchNorm
gradients against a float64 single-process reference and checks the gather of uneven/empty shards.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# SGD (not Adam): Adam's first step is ±lr on every weight whatever the gradient's size, so float32 round-off
# on near-zero gradient entries becomes lr-sized weight differences and the runs drift apart chaotically.
# One global batch of 21 queries per cache refresh: slices of 11 and 10 queries (uneven) on 2 ranks.
DDP_FLAGS = ["--optim", "sgd", "--lr", "0.05", "--train_batch_size", "21", "--cache_refresh_rate", "21",
             "--queries_per_epoch", "42", "--epochs_num", "1"]
LOSS_RTOL = 1e-3  # measured ≤ 3e-5; losses must agree far below the 10-30% changes one training step makes
RECALL_ATOL = 5.0  # percentage points = 2 of the 40 test queries: a near-tie may flip under round-off
GRAD_RTOL = 1e-4  # float32 sync-BN + DDP vs a float64 single process (float32 round-off is ~1e-6)


def train_flags(world: Path, save_dir: str) -> list[str]:
    from conftest import tiny_train_flags
    return tiny_train_flags(world, save_dir) + DDP_FLAGS


def test_ddp_matches_single_process(tiny_world, tmp_path, monkeypatch):
    """2-rank DDP writes one run folder, and its loss curve and test recall match one process."""
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, str(tiny_world), str(ddp_dir)], cwd=ddp_dir, capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((ddp_dir / "logs" / "ddp").iterdir())
    assert len(runs) == 1, f"one run folder expected, got {runs}"
    assert sorted(p.name for p in runs[0].iterdir()) == ["args.json", "best_model.pth", "debug.log", "info.log",
                                                         "last_model.pth", "results.json", "training_curves.png"]
    ddp = json.loads((runs[0] / "results.json").read_text())

    import train
    monkeypatch.chdir(tmp_path)
    single = train.main(train_flags(tiny_world, "single"))
    print(f"losses ddp {ddp['losses']} single {single['losses']}; test ddp {ddp['test']['recalls']} "
          f"single {single['test']['recalls']}")
    assert len(ddp["losses"]) == len(single["losses"]) == 2
    np.testing.assert_allclose(ddp["losses"], single["losses"], rtol=LOSS_RTOL)
    for n, r in single["test"]["recalls"].items():
        assert abs(ddp["test"]["recalls"][n] - r) <= RECALL_ATOL, (n, ddp["test"]["recalls"], r)

    checks = json.loads((ddp_dir / "checks.json").read_text())
    print(f"worker checks: {checks}")
    assert checks["gather"] == [[3, 4], [3, 4]]
    for b, err in checks["sync_bn"].items():  # b = global batch: uneven slices (3 → 2+1), one empty (1 → 1+0)
        assert err["grad"] < GRAD_RTOL and err["running_stats"] < GRAD_RTOL and err["loss"] < GRAD_RTOL, (b, err)


def _sync_bn_errors(batch: int) -> dict[str, float]:
    """Relative errors of DDP + SyncBatchNorm2d (float32, batch split over the ranks) vs one float64 process."""
    import torch
    from torch import nn

    from training import distributed
    from training.losses import build_criterion
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    ref = copy.deepcopy(net).double()
    ddp = distributed.wrap(net, "cpu")
    criterion = build_criterion("sare_joint")
    x = torch.randn(batch, 3, 3, 9, 9)  # B×(query, positive, 1 negative)×3×H×W
    mine = x.tensor_split(distributed.world_size())[distributed.rank()]
    feats = ddp(mine.flatten(0, 1))
    loss, value = distributed.global_mean_loss(criterion, feats.view(len(mine), 3, feats.shape[-1]))
    loss.backward()
    ref_feats = ref(x.double().flatten(0, 1)).view(batch, 3, -1)
    ref_loss = criterion(ref_feats[:, 0], ref_feats[:, 1], ref_feats[:, 2:])
    ref_loss.backward()

    def rel(a: list, b: list) -> float:
        a, b = torch.cat([t.flatten().double() for t in a]), torch.cat([t.flatten() for t in b])
        return float((a - b).norm() / b.norm())
    stats = lambda m: [t for k, t in m.named_buffers() if "running" in k]
    return {"loss": abs(value - ref_loss.item()) / ref_loss.item(),
            "grad": rel([p.grad for p in net.parameters()], [p.grad for p in ref.parameters()]),
            "running_stats": rel(stats(net), stats(ref))}


def _worker(world: Path, out: Path) -> None:
    """torchrun entry: DDP training on every rank, then primitive checks; rank 0 writes checks.json."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from training import distributed
    import train
    train.main(train_flags(world, "ddp"))  # joins the process group, left open until exit
    rows = {0: np.arange(12, dtype=np.float32).reshape(3, 4), 1: np.zeros((0, 0), np.float32)}
    uneven = np.arange(12, dtype=np.float32).reshape(3, 4)[[0, 1] if distributed.rank() == 0 else [2]]
    gathered = [distributed.all_gather_rows(rows[distributed.rank()]), distributed.all_gather_rows(uneven)]
    gather_ok = [list(g.shape) if np.array_equal(g, rows[0]) else str(g) for g in gathered]
    checks = {"gather": gather_ok, "sync_bn": {str(b): _sync_bn_errors(b) for b in (3, 1)}}
    if distributed.is_main():
        (out / "checks.json").write_text(json.dumps(checks))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
