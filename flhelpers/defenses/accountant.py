r"""Rényi-DP accountant of the subsampled Gaussian mechanism (the privacy of DP-FedAvg).

One round of DP-FedAvg (McMahan et al. 2018) is the *sampled Gaussian mechanism* (SGM):
each peer takes part with probability $q$, its update is clipped to L2 norm $C$ and
Gaussian noise of standard deviation $z C$ is added to the sum ($z$ = noise multiplier).

RDP of one SGM step at order $\alpha$ (Mironov, Talwar and Zhang 2019, "Rényi Differential
Privacy of the Sampled Gaussian Mechanism", section 3.3):

$$
\varepsilon_{\mathrm{RDP}}(\alpha) = \frac{\log A_\alpha}{\alpha - 1}, \qquad
A_\alpha = \mathbb{E}_{x \sim \mathcal{N}(0, z^2)}
\Bigl[\Bigl((1 - q) + q \exp\Bigl(\frac{2x - 1}{2 z^2}\Bigr)\Bigr)^\alpha\Bigr]
$$

* integer $\alpha$:
  $A_\alpha = \sum_{k=0}^{\alpha} \binom{\alpha}{k} (1-q)^{\alpha-k} q^k \exp\bigl(\frac{k^2 - k}{2 z^2}\bigr)$;
* fractional $\alpha$: split the integral at $x_0 = z^2 \log(1/q - 1) + 1/2$ and expand each
  side in a binomial series (generalised binomial coefficients, alternating signs), with
  $j = \alpha - k$ and $\Phi$ the standard normal CDF:
  $$
  A_\alpha = \sum_k \binom{\alpha}{k} (1-q)^{\alpha-k} q^k \exp\Bigl(\frac{k^2 - k}{2z^2}\Bigr) \Phi\Bigl(\frac{x_0 - k}{z}\Bigr)
  + \sum_k \binom{\alpha}{k} (1-q)^k q^{\alpha-k} \exp\Bigl(\frac{j^2 - j}{2z^2}\Bigr) \Phi\Bigl(\frac{j - x_0}{z}\Bigr);
  $$
* $q = 1$ is the plain Gaussian mechanism: $\varepsilon_{\mathrm{RDP}}(\alpha) = \alpha / (2 z^2)$.

RDP composes by addition over steps. Conversion to $(\varepsilon, \delta)$-DP, minimised over orders:

* ``"improved"`` (Balle et al. 2020, "Hypothesis testing interpretations and Rényi differential
  privacy", Theorem 21; Opacus' default):
  $$
  \varepsilon = \varepsilon_{\mathrm{RDP}}(\alpha) + \log\frac{\alpha - 1}{\alpha} - \frac{\log \delta + \log \alpha}{\alpha - 1}
  $$
* ``"classic"`` (Mironov 2017, Proposition 3; TensorFlow Privacy's tables):
  $$
  \varepsilon = \varepsilon_{\mathrm{RDP}}(\alpha) + \frac{\log(1 / \delta)}{\alpha - 1}
  $$

The analysis assumes Poisson sampling (each peer independently with probability ``q``); the
engine draws exactly ``m = q K`` peers without replacement, for which ``q = m / K`` is the
customary approximation.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.special import gammaln, log_ndtr, logsumexp

#: The orders Opacus and TensorFlow Privacy use by default.
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
CONVERSIONS = ("improved", "classic")


def _check(q: float, noise_multiplier: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"The sampling rate q must be in [0, 1], got {q}; use q = (peers per round) / (peers).")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}.")


def _log_binom_signed(alpha: float, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log|binom(alpha, k)|`` and its sign, for real ``alpha > 0`` and integer ``k >= 0``.

    ``binom(alpha, k) = Gamma(alpha + 1) / (Gamma(k + 1) Gamma(alpha - k + 1))``. For fractional
    ``alpha`` and ``k > alpha + 1`` the last argument ``x = alpha - k + 1`` is negative, where
    ``Gamma(x)`` is negative on (-1, 0), positive on (-2, -1), ...: its sign is ``(-1)^floor(x)``.
    ``scipy.special.gammaln`` returns ``log|Gamma(x)|``.
    """
    k = k.astype(float)
    if float(alpha).is_integer():
        a = int(alpha)
        if np.any(k > a):
            raise ValueError("integer orders use the finite sum k = 0..alpha")
        return gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1), np.ones_like(k)
    x = alpha - k + 1
    sign = np.where(x > 0, 1.0, np.where(np.floor(x) % 2 == 0, 1.0, -1.0))
    return gammaln(alpha + 1) - gammaln(k + 1) - gammaln(x), sign


def _log_a_integer(q: float, z: float, alpha: int) -> float:
    k = np.arange(alpha + 1)
    log_b, _ = _log_binom_signed(float(alpha), k)
    terms = log_b + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * z * z)
    return float(logsumexp(terms))


def _log_a_fractional(q: float, z: float, alpha: float, chunk: int = 512, max_terms: int = 200_000) -> float:
    """``log A_alpha`` for fractional ``alpha`` by the two alternating series, summed in log space."""
    x0 = z * z * math.log(1.0 / q - 1.0) + 0.5
    log_q, log_1q = math.log(q), math.log1p(-q)
    logs: list[np.ndarray] = []
    signs: list[np.ndarray] = []
    start = 0
    total = -np.inf
    while start < max_terms:
        k = np.arange(start, start + chunk, dtype=float)
        j = alpha - k
        log_b, sign = _log_binom_signed(alpha, k)
        s1 = log_b + j * log_1q + k * log_q + (k * k - k) / (2 * z * z) + log_ndtr((x0 - k) / z)
        s2 = log_b + k * log_1q + j * log_q + (j * j - j) / (2 * z * z) + log_ndtr((j - x0) / z)
        logs += [s1, s2]
        signs += [sign, sign]
        total, total_sign = logsumexp(np.concatenate(logs), b=np.concatenate(signs), return_sign=True)
        if np.isnan(total) or np.isposinf(total) or np.isposinf(max(s1.max(), s2.max())):
            return math.inf  # the terms overflow: the noise is far too small for any privacy
        if total_sign <= 0:
            total = -np.inf
        start += chunk
        # stop once the chunk's largest term is negligible against the running sum
        if start > alpha + 1 and np.isfinite(total) and max(s1.max(), s2.max()) < total - 36.0:
            break
    else:
        raise RuntimeError(f"The RDP series for alpha={alpha}, q={q}, z={z} did not converge.")
    if not np.isfinite(total):
        raise RuntimeError(f"The RDP series for alpha={alpha}, q={q}, z={z} lost all precision.")
    return float(total)


def rdp_sampled_gaussian(q: float, noise_multiplier: float,
                         orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP ``eps_RDP(alpha)`` of one step of the sampled Gaussian mechanism, for each order.

    Args:
        q: the sampling rate (peers per round / peers), in [0, 1].
        noise_multiplier: ``z``, the noise standard deviation in units of the clipping norm.
        orders: the Rényi orders ``alpha > 1``.

    Returns ``inf`` for every order when ``z = 0`` (no noise, no privacy) and ``0`` when ``q = 0``.
    """
    _check(q, noise_multiplier)
    orders_arr = np.asarray(list(orders), dtype=float)
    if np.any(orders_arr <= 1):
        raise ValueError("Rényi orders must all be > 1.")
    if q == 0:
        return np.zeros_like(orders_arr)
    if noise_multiplier == 0:
        return np.full_like(orders_arr, np.inf)
    z = float(noise_multiplier)
    if q == 1.0:
        with np.errstate(over="ignore", divide="ignore"):
            return orders_arr / (2 * z * z)
    out = np.empty_like(orders_arr)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # tiny z: RDP is +inf
        for i, alpha in enumerate(orders_arr):
            if float(alpha).is_integer():
                log_a = _log_a_integer(q, z, int(alpha))
            else:
                log_a = _log_a_fractional(q, z, float(alpha))
            out[i] = log_a / (alpha - 1)
    return np.where(np.isnan(out), np.inf, out)


def rdp_to_epsilon(rdp: Iterable[float], orders: Sequence[float], delta: float,
                   conversion: str = "improved") -> tuple[float, float]:
    """``(epsilon, best order)`` of an RDP curve at ``delta`` (see the module docstring).

    ``conversion`` is ``"improved"`` (Balle et al. 2020, Opacus) or ``"classic"`` (Mironov 2017).
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}; a common choice is 1 / (number of peers)^1.1.")
    if conversion not in CONVERSIONS:
        raise ValueError(f"Unknown conversion {conversion!r}; valid: {', '.join(CONVERSIONS)}.")
    rdp_arr = np.asarray(list(rdp), dtype=float)
    a = np.asarray(list(orders), dtype=float)
    if rdp_arr.shape != a.shape:
        raise ValueError(f"rdp has {rdp_arr.size} values but there are {a.size} orders.")
    if conversion == "classic":
        eps = rdp_arr + math.log(1.0 / delta) / (a - 1)
    else:
        eps = rdp_arr + np.log((a - 1) / a) - (math.log(delta) + np.log(a)) / (a - 1)
    eps = np.where(np.isnan(eps), np.inf, eps)
    i = int(np.argmin(eps))
    return max(float(eps[i]), 0.0), float(a[i])


def epsilon_of(q: float, noise_multiplier: float, steps: int, delta: float,
               orders: Sequence[float] = DEFAULT_ORDERS, conversion: str = "improved") -> float:
    """``epsilon`` after ``steps`` compositions of the sampled Gaussian mechanism."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if steps == 0:
        return 0.0
    rdp = steps * rdp_sampled_gaussian(q, noise_multiplier, orders)
    return rdp_to_epsilon(rdp, orders, delta, conversion)[0]


class RDPAccountant:
    """Tracks the RDP spent by a sequence of sampled Gaussian steps; ``epsilon(delta)`` at any time.

    >>> acc = RDPAccountant()
    >>> acc.step(q=0.1, noise_multiplier=1.0, steps=10)
    >>> round(acc.epsilon(1e-5), 3) > 0
    True

    Its state (the history of ``(q, z, steps)``) round-trips through :meth:`state_dict` and
    :meth:`load_state_dict`, so a resumed run reports the same epsilon.
    """

    def __init__(self, orders: Sequence[float] = DEFAULT_ORDERS, conversion: str = "improved") -> None:
        if conversion not in CONVERSIONS:
            raise ValueError(f"Unknown conversion {conversion!r}; valid: {', '.join(CONVERSIONS)}.")
        self.orders = tuple(float(a) for a in orders)
        self.conversion = conversion
        self.history: list[list[float]] = []  # [q, z, steps]
        self._cache: dict[tuple[float, float], np.ndarray] = {}

    def step(self, q: float, noise_multiplier: float, steps: int = 1) -> None:
        """Record ``steps`` steps of the SGM with sampling rate ``q`` and noise multiplier ``z``."""
        _check(q, noise_multiplier)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}.")
        if self.history and self.history[-1][0] == q and self.history[-1][1] == noise_multiplier:
            self.history[-1][2] += steps
        else:
            self.history.append([float(q), float(noise_multiplier), int(steps)])

    @property
    def steps(self) -> int:
        return int(sum(h[2] for h in self.history))

    def rdp(self) -> np.ndarray:
        """The RDP spent so far at each order."""
        total = np.zeros(len(self.orders))
        for q, z, n in self.history:
            key = (q, z)
            if key not in self._cache:
                self._cache[key] = rdp_sampled_gaussian(q, z, self.orders)
            total = total + n * self._cache[key]
        return total

    def epsilon(self, delta: float) -> float:
        """The ``epsilon`` spent so far at ``delta`` (0 before any step)."""
        if not self.history or self.steps == 0:
            return 0.0
        return rdp_to_epsilon(self.rdp(), self.orders, delta, self.conversion)[0]

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [[float(q), float(z), int(n)] for q, z, n in state.get("history", [])]

    def __repr__(self) -> str:
        return f"RDPAccountant(steps={self.steps}, conversion={self.conversion!r})"
