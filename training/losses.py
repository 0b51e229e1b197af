"""Training losses for visual geo-localization.

Every criterion has the same signature ``loss = criterion(q, p, n)``:

* ``q``: B×D query descriptors,
* ``p``: B×D positive descriptors (one positive per query),
* ``n``: B×K×D negative descriptors (K ≥ 1 negatives per query),

and returns a scalar tensor. All losses are computed with batched tensor ops
(no Python loops over triplets or negatives).

Criteria are registered by name in :data:`CRITERIA` with the
:func:`register_criterion` decorator; :func:`build_criterion` looks one up and
binds its ``margin`` when the criterion takes one. Adding a loss is one
function plus one decorator line.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from commons import Registry, UserError

Criterion = Callable[[Tensor, Tensor, Tensor], Tensor]

CRITERIA = Registry("criterion")  # fn(q, p, n, ...) -> scalar, by name (--criterion)
register_criterion = CRITERIA.register


def criterion_settings(name: str) -> dict[str, object]:
    """The settable parameters of criterion `name` (beyond q, p, n) with their defaults."""
    params = list(inspect.signature(CRITERIA[name]).parameters.values())[3:]
    return {prm.name: prm.default for prm in params}


def parse_settings(pairs: list[str]) -> dict[str, float]:
    """--criterion_args KEY=VALUE ... as a dict of floats; UserError for a malformed pair."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            settings[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise UserError(f"--criterion_args takes KEY=VALUE pairs with a number as value, got {pair!r}")
    return settings


def build_criterion(name: str, margin: float | None = None, **settings: float) -> Criterion:
    """Return the criterion registered as ``name`` with ``margin`` (when given and the loss has one) and the other
    settings bound; the loss's own defaults otherwise (triplet margin 0.1, contrastive 0.5, multi_similarity
    alpha 2, beta 50, base 0.5).

    Raises UserError (listing the choices) for an unknown name or setting.
    """
    if name not in CRITERIA:
        raise UserError(f"unknown criterion {name!r}; choose one of: {', '.join(sorted(CRITERIA))}")
    own = criterion_settings(name)
    if margin is not None and "margin" in own:
        settings = {"margin": margin, **settings}
    unknown = sorted(set(settings) - set(own))
    if unknown:
        known = ", ".join(f"{k} (default {v})" for k, v in own.items()) or "none"
        raise UserError(f"--criterion {name} has no setting {unknown[0]}; its settings: {known}")
    return functools.partial(CRITERIA[name], **settings) if settings else CRITERIA[name]


def criterion_from_args(args) -> Criterion:
    """The criterion of train.py's flags: --criterion, --margin and --criterion_args."""
    return build_criterion(args.criterion, args.margin, **parse_settings(args.criterion_args))


def _check_shapes(q: Tensor, p: Tensor, n: Tensor) -> None:
    """Raise ValueError unless q, p are B×D and n is B×K×D with K ≥ 1."""
    if q.dim() != 2 or p.shape != q.shape or n.dim() != 3 or n.shape[0] != q.shape[0] \
            or n.shape[2] != q.shape[1] or n.shape[1] < 1:
        raise ValueError(f"expected q, p: B×D and n: B×K×D with K ≥ 1, "
                         f"got q {tuple(q.shape)}, p {tuple(p.shape)}, n {tuple(n.shape)}")


def _sq_dists(q: Tensor, p: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """Squared L2 distances: query-positive (B) and query-negatives (B×K)."""
    d_qp = (q - p).pow(2).sum(-1)
    d_qn = (q.unsqueeze(1) - n).pow(2).sum(-1)
    return d_qp, d_qn


@register_criterion("triplet")
def triplet_loss(q: Tensor, p: Tensor, n: Tensor, margin: float = 0.1) -> Tensor:
    """Triplet margin loss averaged over all B·K triplets (q_b, p_b, n_bk).

    Per triplet: max(0, d(q, p) - d(q, n) + margin), with d the L2 distance as in
    ``F.pairwise_distance(p=2, eps=1e-6)``; the result equals
    ``nn.TripletMarginLoss(margin, p=2, reduction="mean")`` on the expanded triplets.
    """
    _check_shapes(q, p, n)
    d_qp = F.pairwise_distance(q, p, p=2, eps=1e-6)  # B
    d_qn = F.pairwise_distance(q.unsqueeze(1).expand_as(n), n, p=2, eps=1e-6)  # B×K
    return F.relu(d_qp.unsqueeze(1) - d_qn + margin).mean()


@register_criterion("sare_joint")
def sare_joint(q: Tensor, p: Tensor, n: Tensor) -> Tensor:
    """SARE, joint version (Liu et al., ICCV 2019), averaged over B.

    Per query: -log( exp(-d_qp) / (exp(-d_qp) + Σ_k exp(-d_qnk)) ) with d the
    squared L2 distance, i.e. the cross-entropy of a softmax over the K+1
    logits -d, whose target is the positive. Works for any K ≥ 1.
    """
    _check_shapes(q, p, n)
    d_qp, d_qn = _sq_dists(q, p, n)
    logits = torch.cat([-d_qp.unsqueeze(1), -d_qn], dim=1)  # B×(K+1)
    return (torch.logsumexp(logits, dim=1) + d_qp).mean()


@register_criterion("sare_ind")
def sare_ind(q: Tensor, p: Tensor, n: Tensor) -> Tensor:
    """SARE, individual version (Liu et al., ICCV 2019), averaged over B·K.

    Per (query, negative k): -log( exp(-d_qp) / (exp(-d_qp) + exp(-d_qnk)) ) with
    d the squared L2 distance; the mean over k and over the batch is returned.
    """
    _check_shapes(q, p, n)
    d_qp, d_qn = _sq_dists(q, p, n)
    neg_d_qp = (-d_qp).unsqueeze(1).expand_as(d_qn)  # B×K
    logits = torch.stack([neg_d_qp, -d_qn], dim=-1)  # B×K×2
    return (torch.logsumexp(logits, dim=-1) - neg_d_qp).mean()


@register_criterion("contrastive")
def contrastive(q: Tensor, p: Tensor, n: Tensor, margin: float = 0.5) -> Tensor:
    """Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006).

    Per query: d_qp² + (1/K) Σ_k max(0, margin - d_qnk)², with d the L2 distance
    (``F.pairwise_distance`` for the hinge term), then the mean over B. The
    negative term is averaged over K so the positive and negative parts keep the
    same weight whatever K is; no 1/2 factors. With L2-normalized descriptors
    distances lie in [0, 2], so useful margins are roughly 0.5–1.5 (note that
    ``build_criterion`` binds its own ``margin`` argument, 0.1 by default).
    """
    _check_shapes(q, p, n)
    d_qp_sq = (q - p).pow(2).sum(-1)  # B
    d_qn = F.pairwise_distance(q.unsqueeze(1).expand_as(n), n, p=2, eps=1e-6)  # B×K
    return (d_qp_sq + F.relu(margin - d_qn).pow(2).mean(1)).mean()


@register_criterion("multi_similarity")
def multi_similarity(q: Tensor, p: Tensor, n: Tensor, alpha: float = 2.0, beta: float = 50.0,
                     base: float = 0.5) -> Tensor:
    """Multi-Similarity loss (Wang et al., CVPR 2019), adapted to one positive and K negatives.

    With cosine similarities S_qp (B) and S_qnk (B×K), per query:
        (1/alpha) log(1 + exp(-alpha (S_qp - base)))
      + (1/beta)  log(1 + Σ_k exp(beta (S_qnk - base))),
    averaged over B. Adaptation: the anchors are the queries only, each with its
    own positive and negatives (no similarities across queries of the batch).
    The paper's pair mining is omitted: all K negatives are used (the VG
    dataloader already mines hard negatives). Inputs are normalized internally.
    """
    _check_shapes(q, p, n)
    s_qp = F.cosine_similarity(q, p, dim=-1)  # B
    s_qn = F.cosine_similarity(q.unsqueeze(1), n, dim=-1)  # B×K
    pos = F.softplus(-alpha * (s_qp - base)) / alpha
    zeros = s_qn.new_zeros(s_qn.shape[0], 1)
    neg = torch.logsumexp(torch.cat([zeros, beta * (s_qn - base)], dim=1), dim=1) / beta
    return (pos + neg).mean()
