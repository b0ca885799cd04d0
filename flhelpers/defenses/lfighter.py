r"""LFighter (Jebreel, Domingo-Ferrer, Sanchez and Blanco-Justicia, "Defending against the
Label-flipping Attack in Federated Learning", 2022/2024): Algorithm 1 with Procedures 1 and 2.

Per round, with $\mathrm{grad}_k = (W^t - W_k^{t+1}) / \eta = -u_k / \eta$ (:meth:`AggregationContext.gradients`)
and $g_{k,i}$ the gradient row of output neuron $i$ of peer $k$ (its weight row followed by
its bias, :meth:`ParamLayout.output_rows`):

1. Neuron magnitudes $m_{k,i} = \lVert g_{k,i} \rVert$.
2. iid / mild non-iid (Procedure 1, FILTER_MILD):
   $M_i = \sum_k m_{k,i}$; the two largest, $i_{\max 1}$ and $i_{\max 2}$ (in that order), are the
   potential source and target neurons; feature $x_k = [g_{k,i_{\max 1}}, g_{k,i_{\max 2}}]$;
   $cl_1, cl_2 = \operatorname{kmeans}(x, 2)$; for a cluster $cl$ of $n$ members,
   $\theta_{ij} = \arccos(\cos(x_i, x_j))$ and the inverse density and score
   $$
   \mathrm{dns}(cl) = \frac{1}{n} \sum_{i \in cl} \max_{j \in cl} \theta_{ij}, \qquad
   \mathrm{score}_c = \frac{|cl_c|}{|cl_1| + |cl_2|} \, \mathrm{dns}(cl_c);
   $$
   the cluster with the lower score is bad.
3. extreme non-iid (Procedure 2, FILTER_EXTREME):
   per peer its own two largest neurons $i_{\max 1,k}, i_{\max 2,k}$; feature
   $x_k = [g_{k,i_{\max 1,k}}, g_{k,i_{\max 2,k}}]$ (the two rows concatenated, largest first, as
   Procedure 2 writes it; :func:`concat_features`); ``HDBSCAN(min_cluster_size=2)`` with the
   ``hdbscan`` package's neighbourhood (scikit-learn ``min_samples=3``, below); for every cluster
   $j$ the neuron-wise mean $\mu_j$ of its members' output-layer gradients and
   $\mathrm{top}_j = \operatorname{argmax}_i \lVert \mu_{j,i} \rVert$; among clusters that share the same
   $\mathrm{top}_j$ the smaller ones are bad; HDBSCAN noise (label ``-1``) is bad.
4. FedAvg (weighted by sample count) over the peers that are not bad.

With a single output neuron (IMDB) the feature is the whole output layer gradient and the k-means
branch is used, whatever the distribution.

The authors' released code (``variant="released"``, :func:`filter_released`) computes something
else; its seven differences from the text above are listed in :class:`LFighter`'s docstring.
The paper's text is the default.

Choices where the paper is silent (each also stated at the code that makes it):

* **Singleton cluster.** Procedure 1 takes $\max_j \theta_{ij}$ over all $j$ of the cluster,
  $j = i$ included ($\theta_{ii} = 0$), so a one-member cluster has $\mathrm{dns} = 0$ and score 0,
  and is flagged unless the other cluster also scores 0. (The authors' released code instead
  gives a singleton the value of a 90-degree angle, and clips every cluster's inverse density at
  90 degrees from below because it takes the minimum of a cosine matrix whose diagonal was set
  to 0; we follow the paper.)
* **Zero feature vectors** count as orthogonal (90 degrees) to every other vector (scikit-learn's
  cosine convention) and at angle 0 to themselves.
* **Score ties** (equal within 1e-9 relative): the smaller cluster is bad (the paper: "when the
  two clusters have similar densities, the smaller is probably the bad one"); if the two clusters
  are also equally large nothing distinguishes them and every peer is accepted.
* **HDBSCAN parameters:** only ``min_cluster_size=2`` is given by the paper; ``min_samples``
  is left at the default of the ``hdbscan`` package the authors used, ``min_samples =
  min_cluster_size = 2`` neighbours *besides* the point. scikit-learn's ``HDBSCAN`` counts the
  point itself in ``min_samples``, so the same neighbourhood is scikit-learn's ``min_samples=3``
  (our default; its own default, 2, is a smaller neighbourhood that labels more peers noise).
  Euclidean metric, excess-of-mass cluster selection.
* **Extreme-branch feature** (``docs/findings/mnist-extreme.md``): the two rows
  concatenated, as Procedure 2 writes it. Keeping them in place inside the zeroed output layer
  (``extreme_features="in-place"``, our earlier reading) encodes *which* second neuron each
  peer has; honest peers of one class differ there, so their class split into several clusters
  sharing a top neuron and the smaller ones were rejected: at the paper's MNIST-Extreme
  structure (100 peers, 4 of the 10 class-7 holders attacking, 40 rounds) 6.2 honest peers a
  round (FPR 6.4 %), against 0.3 (FPR 0.3 %) with the concatenated rows and the package's
  neighbourhood, at a TPR of 0.88 instead of 1.0 (in 5 of 40 rounds the attackers joined
  another cluster). The paper reports no false positives on MNIST-Extreme.
* **Neuron ties** (equal magnitudes): the lower neuron index ranks first (stable sort).
* **Several extreme-branch clusters sharing a top neuron:** every one smaller than the largest
  of them is bad (the paper's loop compares pairs and only describes two); clusters tied for the
  largest size are all kept (the paper's comparison ``|cl_i| > |cl_j|`` is strict).
* **Degenerate inputs, no exception, every peer accepted** (recorded in ``info["reason"]``):
  fewer than 3 peers (two clusters from two points, or one, carry no evidence of who is bad);
  fewer than 2 distinct feature vectors (k-means and HDBSCAN find no structure); k-means
  returning a single cluster; HDBSCAN labelling every peer noise (the paper would reject
  everyone and leave no update to average).
* **Automatic distribution** (``distribution="auto"``): a peer *holds* class ``i`` when its bias
  gradient for $i$ is negative ($\delta_i = p_i - y_i$ is in $[-1, 0]$ only for held
  classes). The round is *extreme* when more than half of the peers hold exactly one class,
  otherwise iid/mild (both use Procedure 1). In an extreme split every honest peer and every
  attacker (who holds only the target label after flipping) shows exactly one negative bias
  gradient; in iid and Dirichlet splits peers show several. Fallbacks to iid: a single output
  neuron (the paper's IMDB rule), two output neurons (softmax bias gradients sum to zero, so
  every peer shows exactly one negative entry and the sign rule carries no information; with two
  neurons Procedure 1 uses the whole output layer, as the authors' code does), and an output
  layer without bias.

The procedures are pure functions in :mod:`flhelpers.defenses.lfighter_procedures` (the paper's)
and :mod:`flhelpers.defenses.lfighter_released` (the released code's); this module holds the rule
(:class:`LFighter`, :class:`LFighterReleased`) that applies them each round, and every name of
those two modules stays importable from here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from flhelpers.defenses.base import AggregationContext, AggregationResult, Defense, mean_of_accepted
from flhelpers.defenses.lfighter_procedures import (  # noqa: F401  (re-exported)
    cluster_inverse_density,
    cluster_scores,
    concat_features,
    detect_distribution,
    extreme_features,
    filter_extreme,
    filter_mild,
    filter_mild_passes,
    neuron_magnitudes,
    pairwise_angles,
    split_by_own_top,
    top_two,
)
from flhelpers.defenses.lfighter_released import (  # noqa: F401  (re-exported)
    cosine_matrix,
    filter_released,
    released_dissimilarity,
    released_magnitudes,
    released_scores,
)

__all__ = [
    "Distribution",
    "LFighter",
    "LFighterReleased",
    "cluster_inverse_density",
    "cluster_scores",
    "concat_features",
    "cosine_matrix",
    "detect_distribution",
    "extreme_features",
    "filter_extreme",
    "filter_mild",
    "filter_mild_passes",
    "filter_released",
    "neuron_magnitudes",
    "pairwise_angles",
    "released_dissimilarity",
    "released_magnitudes",
    "released_scores",
    "split_by_own_top",
    "top_two",
]

Distribution = Literal["auto", "iid", "mild", "extreme"]
_DISTRIBUTIONS = ("auto", "iid", "mild", "extreme")
_EXTREME_FEATURES = ("in-place", "concat")
_VARIANTS = ("paper", "released")


# ----------------------------------------------------------------------------- the rule


class LFighter(Defense):
    r"""LFighter: cluster the peers' source/target output-neuron gradients, drop the bad cluster.

    Args:
        distribution: ``"iid"`` or ``"mild"`` (Procedure 1, k-means), ``"extreme"``
            (Procedure 2, HDBSCAN), or ``"auto"``: read each round from the signs of the peers'
            output-bias gradients (module docstring). A single output neuron always uses
            Procedure 1 on the whole output layer.
        n_init: k-means restarts (scikit-learn ``KMeans(n_init=...)``); seeded with ``ctx.seed``.
        extreme_features: Procedure 2's feature: ``"concat"`` (the paper's
            ``[g_imax1, g_imax2]``) or ``"in-place"`` (the two rows inside the zeroed output
            layer; see the module docstring for why it is not the default).
        min_samples: scikit-learn HDBSCAN's ``min_samples`` (the point itself included); 3 is
            the ``hdbscan`` package's default for ``min_cluster_size=2``; ``None`` is
            scikit-learn's own default (2).
        split_by_own_top: Procedure 2 only, not the paper's rule (default ``False``): split every
            HDBSCAN cluster by its members' own largest neuron before comparing clusters that
            share a top neuron (:func:`split_by_own_top`). In an extreme split a peer's own
            largest neuron is the class its labels claim (attackers: the target), so a cluster
            then stands for one class, as Procedure 2 assumes, and attackers merged into the
            source-class peers' cluster, or into one large cluster of many classes, are compared
            with the target-class peers' cluster instead - the comparison the paper's account of
            Procedure 2 relies on ("provided that the number of attackers is less than the
            number of peers of the target class"). At the paper's
            MNIST-Extreme structure the paper's rule misses the attackers in rounds where
            HDBSCAN merged them into such a cluster (``flhelpers_lab/lfighter_record.py``).
        passes: Procedure 1 passes (iid/mild, several output neurons): 1 is the paper's rule
            (the default); more peel off attackers of further source -> target pairs
            (:func:`filter_mild_passes`), at the cost of one k-means a pass and of
            honest peers rejected when no second pair is attacked.

        variant: ``"paper"`` (the default: Procedures 1 and 2 as the paper's text writes them) or
            ``"released"``: what the authors' released code (``najeebjebreel/LFighter``,
            ``aggregation.py``, class ``LFD``), which produced the journal's numbers, computes.
            Its differences from the paper's text:

            1. *The cluster score* (decides):
               $\mathrm{ds}_c = \frac{n_c}{m} \bigl(1 - \operatorname{mean}_i \min_j (CS_c - I)_{ij}\bigr)$
               with $CS_c$ the cosine matrix of cluster $c$'s features; the larger $\mathrm{ds}$ is good
               (tie: cluster 0). The row minimum includes the zeroed diagonal, so a cluster whose
               members are all within 90 degrees of each other scores ``n_c / m`` and the larger
               such cluster wins; a singleton scores ``1 / m``. The paper's score (size share x mean
               largest angle) marks the *tighter* cluster bad instead
               (:func:`released_dissimilarity`, :func:`filter_released`).
            2. *Neuron magnitudes* (can decide which neurons):
               $M_c = \sum_k \lVert dW_k[c] \rVert_2 + \sum_k |db_k[c]|$, the weight row's norm and the
               bias's absolute value summed separately, with $dW = W_{\mathrm{global}} - W_{\mathrm{local}}$
               not divided by the learning rate
               (:func:`released_magnitudes`; the scale does not change the ranking).
            3. *Features* (can decide): ``dW_k`` at the two rows, weights only, no bias.
            4. *Clustering* (can decide): ``KMeans(n_clusters=2, random_state=0, n_init=10)``, the
               same initialisation every round (the paper variant seeds it per round).
            5. *Aggregation* (changes the step, not the verdict): the unweighted mean of the good
               cluster's models, BatchNorm statistics included (the paper: FedAvg by sample count).
            6. *One cluster is always dropped* (decides at 0 % attackers): no tie rule, no
               "accept everyone" when the clusters are alike.
            7. *Two or fewer outputs (IMDB)*: the features are the whole output layer's ``dW``
               weights (no bias), as in point 3.

            And no extreme branch: Procedure 2 (HDBSCAN) exists only in the authors' earlier
            repository, so the released variant runs k-means on every split, MNIST-Extreme
            included; ``distribution="extreme"``, ``passes > 1`` and ``split_by_own_top`` are
            refused with it.

    ``info`` holds ``distribution``, the potential ``source_target`` neurons (iid/mild) or each
    peer's ``peer_top_neurons`` (extreme), the cluster ``labels``, ``scores`` and
    ``inverse_densities`` (iid/mild; ``dissimilarities`` for the released variant) or
    ``cluster_top_neuron`` (extreme), ``variant`` when it is ``"released"``, and ``reason``.
    """

    name = "lfighter"

    def __init__(self, distribution: Distribution = "auto", n_init: int = 10,
                 extreme_features: str = "concat", min_samples: int | None = 3, passes: int = 1,
                 split_by_own_top: bool = False, variant: str = "paper") -> None:
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(map(repr, _VARIANTS))} ('paper': the "
                             f"paper's text, 'released': the authors' released code); got {variant!r}.")
        if variant == "released":
            if distribution == "extreme":
                raise ValueError("variant='released' has no extreme branch (the released code runs k-means "
                                 "on every split); use distribution='auto' or variant='paper'.")
            if passes != 1 or split_by_own_top:
                raise ValueError("passes and split_by_own_top are options of the paper's variant; "
                                 "leave them at 1 and False with variant='released'.")
        self.variant = variant
        if not isinstance(split_by_own_top, bool):
            raise ValueError(f"split_by_own_top must be True or False (False: the paper's Procedure 2); "
                             f"got {split_by_own_top!r}.")
        self.split_by_own_top = split_by_own_top
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes must be a positive integer (1: the paper's Procedure 1); got {passes!r}.")
        self.passes = passes
        if extreme_features not in _EXTREME_FEATURES:
            raise ValueError(f"extreme_features must be one of {', '.join(map(repr, _EXTREME_FEATURES))}; "
                             f"got {extreme_features!r}.")
        if min_samples is not None and (isinstance(min_samples, bool) or not isinstance(min_samples, int)
                                        or min_samples < 1):
            raise ValueError(f"min_samples must be a positive integer or None; got {min_samples!r}.")
        self.extreme_features = extreme_features
        self.min_samples = min_samples
        if distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {', '.join(map(repr, _DISTRIBUTIONS))}; got {distribution!r}."
            )
        if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
            raise ValueError(f"n_init must be a positive integer; got {n_init!r}.")
        self.distribution: str = distribution
        self.n_init = n_init

    def aggregate(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        if self.variant == "released":
            return self._aggregate_released(updates, ctx)
        layout = ctx.layout
        # only the output layer is read: never materialise the K x D gradient (ResNet18: GBs)
        # in float64: -u / lr of a finite but huge update would overflow float32 to inf,
        # which k-means and HDBSCAN refuse
        rows = ctx.gradients(layout.output_rows(updates.detach()).to(device="cpu", dtype=torch.float64))
        k, c = rows.shape[0], rows.shape[1]
        info: dict[str, Any] = {}

        if self.distribution == "auto":
            kind, how = detect_distribution(layout, rows)
            info.update(how)
        else:
            kind = "iid" if self.distribution in ("iid", "mild") else "extreme"
        if c == 1:
            kind = "iid"  # the paper's IMDB rule: all output-layer gradients, k-means
        info["distribution"] = kind

        mags = neuron_magnitudes(rows).numpy()  # (K, C)
        rows_np = rows.numpy()
        if kind == "iid":
            if c == 1:
                features = rows_np[:, 0, :]
                info["source_target"] = [0]
            elif self.passes > 1:
                features = None
            else:
                pair = top_two(mags.sum(axis=0))
                features = rows_np[:, pair, :].reshape(k, -1)
                info["source_target"] = [int(i) for i in pair]
            if features is None:
                bad, found = filter_mild_passes(rows_np, self.passes, seed=ctx.seed, n_init=self.n_init)
            else:
                bad, found = filter_mild(features, seed=ctx.seed, n_init=self.n_init)
        else:
            pairs = top_two(mags)  # (K, 2)
            make = extreme_features if self.extreme_features == "in-place" else concat_features
            features = make(rows_np, pairs)
            info["peer_top_neurons"] = pairs.tolist()
            bad, found = filter_extreme(features, rows_np, self.min_samples,
                                        own_tops=pairs[:, 0] if self.split_by_own_top else None)
        info.update(found)

        accepted = torch.as_tensor(~bad, dtype=torch.bool, device=updates.device)
        result = mean_of_accepted(updates, ctx, accepted)
        result.info = info
        return result

    def _aggregate_released(self, updates: torch.Tensor, ctx: AggregationContext) -> AggregationResult:
        """The released code's round (class docstring, points 1-7)."""
        layout = ctx.layout
        dw = (-layout.output_rows(updates.detach())).to(device="cpu", dtype=torch.float64).numpy()
        k, c = dw.shape[0], dw.shape[1]
        has_bias = layout.output_bias is not None
        weights = dw[..., :-1] if has_bias else dw
        info: dict[str, Any] = {"variant": "released", "distribution": "iid"}
        if c <= 2:
            features = weights.reshape(k, -1)
            info["source_target"] = list(range(c))
        else:
            pair = top_two(released_magnitudes(dw, has_bias))
            features = weights[:, pair, :].reshape(k, -1)
            info["source_target"] = [int(i) for i in pair]
        bad, found = filter_released(features, n_init=self.n_init)
        info.update(found)
        accepted = torch.as_tensor(~bad, dtype=torch.bool, device=updates.device)
        result = mean_of_accepted(updates, ctx, accepted, weighted=False)
        result.buffer_weights = result.weights
        result.info = info
        return result

    def __repr__(self) -> str:
        if self.variant == "released":
            return f"LFighter(variant='released', n_init={self.n_init})"
        return (f"LFighter(distribution={self.distribution!r}, n_init={self.n_init}, "
                f"extreme_features={self.extreme_features!r}, min_samples={self.min_samples!r}"
                + (f", passes={self.passes}" if self.passes != 1 else "")
                + (", split_by_own_top=True)" if self.split_by_own_top else ")"))


class LFighterReleased(LFighter):
    """``lfighter-released``: :class:`LFighter` with ``variant="released"``, the authors' released code
    (the seven differences are listed in :class:`LFighter`'s docstring), registered under its own
    name so that its runs are a rule of their own in every table, heatmap and grid.

    Args:
        n_init: k-means restarts (the released code: scikit-learn's default of the time, 10).
    """

    name = "lfighter-released"

    def __init__(self, n_init: int = 10) -> None:
        super().__init__(n_init=n_init, variant="released")
