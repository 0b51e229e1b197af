"""Tests for training/losses.py: reference values, registry, non-negativity, gradients, descent."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training import losses
from commons import UserError
from training.losses import (CRITERIA, build_criterion, contrastive, multi_similarity, sare_ind, sare_joint,
                    triplet_loss)

ALL_NAMES = ["triplet", "sare_ind", "sare_joint", "contrastive", "multi_similarity"]


def random_batch(b: int = 4, k: int = 3, d: int = 8, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """Random L2-normalized q, p: B×D and n: B×K×D."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    p = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    n = F.normalize(torch.randn(b, k, d, generator=g, dtype=dtype), dim=-1)
    return q, p, n


def sq(a: Tensor, b: Tensor) -> float:
    """Squared L2 distance of two vectors, as a Python float."""
    return float(((a - b) ** 2).sum())


# ---------------------------------------------------------------- triplet

def test_triplet_hand_computation_2d() -> None:
    q = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[3.0, 4.0], [1.0, 1.0]])            # d_qp = 5, 1
    n = torch.tensor([[[0.0, 5.0], [6.0, 8.0]],            # d_qn = 5, 10
                      [[1.0, 0.5], [1.0, 3.0]]])           # d_qn = 0.5, 3
    # hinge terms with margin 1: [1, 0], [1.5, 0] -> mean 2.5 / 4
    got = triplet_loss(q, p, n, margin=1.0)
    assert got.item() == pytest.approx(2.5 / 4, abs=1e-4)


@pytest.mark.parametrize("margin", [0.1, 0.5, 1.0])
def test_triplet_matches_torch_triplet_margin_loss(margin: float) -> None:
    q, p, n = random_batch(b=5, k=4, d=16, seed=1, dtype=torch.float32)
    b, k, d = n.shape
    ref = nn.TripletMarginLoss(margin=margin, p=2, reduction="mean")(
        q.unsqueeze(1).expand(b, k, d).reshape(-1, d),
        p.unsqueeze(1).expand(b, k, d).reshape(-1, d),
        n.reshape(-1, d))
    assert ref.item() > 0
    torch.testing.assert_close(triplet_loss(q, p, n, margin=margin), ref)


# ---------------------------------------------------------------- SARE

def sare_joint_reference(q: Tensor, p: Tensor, n: Tensor) -> float:
    """Per-sample Python reference of SARE-joint (mean over B)."""
    total = 0.0
    for b in range(q.shape[0]):
        num = math.exp(-sq(q[b], p[b]))
        den = num + sum(math.exp(-sq(q[b], n[b, k])) for k in range(n.shape[1]))
        total += -math.log(num / den)
    return total / q.shape[0]


def sare_ind_reference(q: Tensor, p: Tensor, n: Tensor) -> float:
    """Per-(sample, negative) Python reference of SARE-ind (mean over B·K)."""
    vals = []
    for b in range(q.shape[0]):
        for k in range(n.shape[1]):
            num = math.exp(-sq(q[b], p[b]))
            vals.append(-math.log(num / (num + math.exp(-sq(q[b], n[b, k])))))
    return sum(vals) / len(vals)


def test_sare_joint_k1_equals_sare_ind() -> None:
    q, p, n = random_batch(k=1, seed=2)
    torch.testing.assert_close(sare_joint(q, p, n), sare_ind(q, p, n))


def test_sare_joint_vs_reference_k3() -> None:
    q, p, n = random_batch(k=3, seed=3)
    assert sare_joint(q, p, n).item() == pytest.approx(sare_joint_reference(q, p, n), rel=1e-10)


def test_sare_ind_vs_reference() -> None:
    q, p, n = random_batch(k=3, seed=4)
    assert sare_ind(q, p, n).item() == pytest.approx(sare_ind_reference(q, p, n), rel=1e-10)


def test_sare_joint_differs_from_ind_for_k3() -> None:
    q, p, n = random_batch(k=3, seed=5)
    assert abs(sare_joint(q, p, n).item() - sare_ind(q, p, n).item()) > 1e-3


def test_sare_stable_for_large_distances() -> None:
    q, p, n = random_batch(k=3, seed=6)
    q, p, n = 100 * q, 100 * p, 100 * n  # squared distances ~1e4: naive exp underflows
    for fn in (sare_joint, sare_ind):
        val = fn(q, p, n)
        assert torch.isfinite(val) and val.item() >= 0


# ---------------------------------------------------------------- contrastive / MS

def test_contrastive_hand_computation_2d() -> None:
    q = torch.tensor([[0.0, 0.0]])
    p = torch.tensor([[0.3, 0.4]])                         # d_qp = 0.5 -> 0.25
    n = torch.tensor([[[0.6, 0.0], [3.0, 0.0]]])           # d_qn = 0.6, 3
    # margin 1: 0.25 + mean(0.4², 0) = 0.25 + 0.08
    assert contrastive(q, p, n, margin=1.0).item() == pytest.approx(0.33, abs=1e-5)


def test_contrastive_vs_reference() -> None:
    q, p, n = random_batch(k=3, seed=7)
    m = 1.5
    ref = sum(sq(q[b], p[b]) + sum(max(0.0, m - math.sqrt(sq(q[b], n[b, k]))) ** 2
                                   for k in range(3)) / 3 for b in range(q.shape[0])) / q.shape[0]
    assert contrastive(q, p, n, margin=m).item() == pytest.approx(ref, rel=1e-5)


def multi_similarity_reference(q: Tensor, p: Tensor, n: Tensor, alpha: float, beta: float,
                               base: float) -> float:
    """Per-sample Python reference of the adapted Multi-Similarity loss (mean over B)."""
    total = 0.0
    for b in range(q.shape[0]):
        s_p = float(q[b] @ p[b])  # inputs are unit-norm, so the dot is the cosine
        s_n = [float(q[b] @ n[b, k]) for k in range(n.shape[1])]
        total += math.log(1 + math.exp(-alpha * (s_p - base))) / alpha
        total += math.log(1 + sum(math.exp(beta * (s - base)) for s in s_n)) / beta
    return total / q.shape[0]


@pytest.mark.parametrize("alpha,beta,base", [(2.0, 50.0, 0.5), (1.0, 10.0, 0.0)])
def test_multi_similarity_vs_reference(alpha: float, beta: float, base: float) -> None:
    q, p, n = random_batch(k=3, seed=8)
    got = multi_similarity(q, p, n, alpha=alpha, beta=beta, base=base).item()
    assert got == pytest.approx(multi_similarity_reference(q, p, n, alpha, beta, base), rel=1e-10)


def test_multi_similarity_is_scale_invariant() -> None:
    q, p, n = random_batch(k=3, seed=9)
    torch.testing.assert_close(multi_similarity(q, p, n), multi_similarity(3 * q, 0.5 * p, 7 * n))


# ---------------------------------------------------------------- registry

def test_the_losses_with_reference_tests_are_registered() -> None:
    assert set(ALL_NAMES) <= set(CRITERIA)  # a new loss needs no edit here: the generic tests below take it


def test_build_criterion_binds_margin() -> None:
    q, p, n = random_batch(k=3, seed=10)
    torch.testing.assert_close(build_criterion("triplet", margin=0.7)(q, p, n),
                               triplet_loss(q, p, n, margin=0.7))
    torch.testing.assert_close(build_criterion("contrastive", margin=1.2)(q, p, n),
                               contrastive(q, p, n, margin=1.2))
    assert build_criterion("sare_joint", margin=0.7) is sare_joint


def test_build_criterion_unknown_name_raises_user_error() -> None:
    with pytest.raises(UserError, match="triplet") as info:
        build_criterion("nope")
    assert "nope" in str(info.value) and "\n" not in str(info.value)


def test_register_duplicate_name_rejected() -> None:
    with pytest.raises(ValueError):
        losses.register_criterion("triplet")(triplet_loss)


def test_bad_shapes_rejected() -> None:
    q, p, n = random_batch(k=3)
    with pytest.raises(ValueError):
        triplet_loss(q, p, n[:, :, :-1])
    with pytest.raises(ValueError):
        sare_joint(q, p, n[:, :0])


# ---------------------------------------------------------------- generic properties

@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_scalar_nonnegative_finite_gradients(name: str) -> None:
    crit = build_criterion(name, margin=0.5)
    q, p, n = (t.clone().requires_grad_(True) for t in random_batch(k=3, seed=11))
    loss = crit(q, p, n)
    assert loss.dim() == 0 and loss.item() >= 0
    loss.backward()
    for t in (q, p, n):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert any(t.grad.abs().sum() > 0 for t in (q, p, n))


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_gradient_steps_decrease_loss(name: str) -> None:
    crit = build_criterion(name, margin=0.5)
    g = torch.Generator().manual_seed(12)
    params = [nn.Parameter(torch.randn(*s, generator=g)) for s in ((6, 16), (6, 16), (6, 4, 16))]
    opt = torch.optim.SGD(params, lr=0.5)

    def current() -> Tensor:
        return crit(*(F.normalize(t, dim=-1) for t in params))

    first = current().item()
    assert first > 0
    for _ in range(5):
        opt.zero_grad()
        current().backward()
        opt.step()
    assert current().item() < first


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_identical_queries_and_positives_give_finite_gradients(name: str) -> None:
    """Zero q-p (and q-n) distances must not produce NaN gradients."""
    q, _, _ = random_batch(k=2, seed=13)
    q = q.clone().requires_grad_(True)
    p = q.detach().clone().requires_grad_(True)
    n = q.detach().unsqueeze(1).repeat(1, 2, 1).requires_grad_(True)
    loss = build_criterion(name)(q, p, n)
    loss.backward()
    assert torch.isfinite(loss)
    for t in (q, p, n):
        assert torch.isfinite(t.grad).all()


def test_settings_reach_the_loss_and_defaults_are_the_losses_own() -> None:
    q, p, n = random_batch(k=3, seed=14)
    torch.testing.assert_close(build_criterion("multi_similarity", alpha=1.0, beta=20.0, base=0.3)(q, p, n),
                               multi_similarity(q, p, n, alpha=1.0, beta=20.0, base=0.3))
    torch.testing.assert_close(build_criterion("contrastive")(q, p, n), contrastive(q, p, n, margin=0.5))
    torch.testing.assert_close(build_criterion("triplet")(q, p, n), triplet_loss(q, p, n, margin=0.1))
    assert build_criterion("sare_joint", margin=0.3) is CRITERIA["sare_joint"]  # no margin to bind: ignored
    with pytest.raises(UserError, match="--criterion triplet has no setting alpha; its settings: margin"):
        build_criterion("triplet", alpha=1.0)


def test_criterion_args_from_the_command_line(tiny_world) -> None:
    from parser import parse_train_args
    from training.losses import criterion_from_args
    args = parse_train_args(["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--criterion",
                             "multi_similarity", "--criterion_args", "beta=10", "alpha=3"])
    q, p, n = random_batch(k=3, seed=15)
    torch.testing.assert_close(criterion_from_args(args)(q, p, n), multi_similarity(q, p, n, alpha=3.0, beta=10.0))
    for bad, message in ((["alpha"], "KEY=VALUE pairs"), (["alpha=x"], "KEY=VALUE pairs"), (["gamma=1"], "no setting")):
        with pytest.raises(UserError, match=message):
            parse_train_args(["--datasets_folder", str(tiny_world), "--dataset_name", "synthetic", "--criterion",
                              "multi_similarity", "--criterion_args", *bad])
