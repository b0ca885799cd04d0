"""The RDP accountant of the subsampled Gaussian mechanism against published values and closed forms."""

import math

import numpy as np
import pytest
from scipy import integrate

from flhelpers.defenses.accountant import (
    DEFAULT_ORDERS,
    RDPAccountant,
    epsilon_of,
    rdp_sampled_gaussian,
    rdp_to_epsilon,
)

# TensorFlow Privacy's MNIST DP-SGD tutorial (tutorials/README.md): N = 60,000, batch 256,
# delta = 1e-5, its RDP accountant with the classic conversion and the same orders as ours.
TF_PRIVACY_TABLE = [
    # (noise multiplier, epochs, published epsilon)
    (1.1, 60, 3.01),
    (1.3, 15, 1.19),
    (0.7, 45, 7.10),
    (1.1, 1, 1.03),
    (1.1, 2, 1.11),
]

@pytest.mark.parametrize("z, epochs, published", TF_PRIVACY_TABLE)
def test_matches_tensorflow_privacy_published_epsilons(z, epochs, published):
    q = 256 / 60000
    steps = math.ceil(epochs * 60000 / 256)
    eps = epsilon_of(q, z, steps, 1e-5, conversion="classic")
    assert round(eps, 2) == published


def test_matches_abadi_et_al_moments_accountant_example():
    # Abadi et al. 2016, section 3.1: q = 0.01, sigma = 4, delta = 1e-5, T = 10,000 -> eps ~ 1.26
    eps = epsilon_of(0.01, 4.0, 10_000, 1e-5, orders=range(2, 33), conversion="classic")
    assert round(eps, 2) == 1.26


def test_full_participation_is_the_gaussian_mechanism():
    orders = np.array(DEFAULT_ORDERS)
    z = 1.7
    assert np.allclose(rdp_sampled_gaussian(1.0, z), orders / (2 * z * z))
    # 20 rounds, classic conversion, by hand over the same orders
    by_hand = np.min(20 * orders / (2 * z * z) + math.log(1e5) / (orders - 1))
    assert epsilon_of(1.0, z, 20, 1e-5, conversion="classic") == pytest.approx(by_hand)


@pytest.mark.parametrize("q, z", [(0.01, 1.0), (0.3, 0.8), (0.9, 2.0)])
def test_order_two_closed_form(q, z):
    # A_2 = (1-q)^2 + 2q(1-q) + q^2 e^{1/z^2}  =>  eps_RDP(2) = log(1 + q^2 (e^{1/z^2} - 1))
    expected = math.log1p(q * q * math.expm1(1 / z**2))
    assert rdp_sampled_gaussian(q, z, orders=[2])[0] == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("q, z, alpha", [(0.1, 1.0, 1.5), (0.05, 0.8, 2.5), (0.2, 2.0, 7.3), (0.01, 1.1, 12.5)])
def test_fractional_orders_match_numerical_integration(q, z, alpha):
    # A_alpha = E_{x ~ N(0, z^2)} [((1 - q) + q exp((2x - 1) / (2 z^2)))^alpha]
    def integrand(x):
        ratio = (1 - q) + q * math.exp((2 * x - 1) / (2 * z * z))
        return math.exp(-x * x / (2 * z * z)) / (z * math.sqrt(2 * math.pi)) * ratio**alpha

    a, _ = integrate.quad(integrand, -40 * z, 40 * z, limit=400, epsabs=0, epsrel=1e-12)
    expected = math.log(a) / (alpha - 1)
    assert rdp_sampled_gaussian(q, z, orders=[alpha])[0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("q, z", [(256 / 60000, 1.1), (0.1, 1.0), (0.5, 0.7), (0.02, 0.5)])
def test_matches_opacus(q, z):
    rdp_mod = pytest.importorskip("opacus.accountants.analysis.rdp")
    ours = rdp_sampled_gaussian(q, z)
    theirs = rdp_mod.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=list(DEFAULT_ORDERS))
    assert np.allclose(ours, theirs, rtol=1e-6)
    eps_theirs, order_theirs = rdp_mod.get_privacy_spent(orders=list(DEFAULT_ORDERS), rdp=100 * theirs, delta=1e-5)
    eps_ours, order_ours = rdp_to_epsilon(100 * ours, DEFAULT_ORDERS, 1e-5)
    assert eps_ours == pytest.approx(eps_theirs, rel=1e-6) and order_ours == order_theirs


def test_epsilon_grows_with_steps_and_sampling_rate_and_shrinks_with_noise():
    assert epsilon_of(0.1, 1.0, 10, 1e-5) < epsilon_of(0.1, 1.0, 100, 1e-5)
    assert epsilon_of(0.05, 1.0, 50, 1e-5) < epsilon_of(0.2, 1.0, 50, 1e-5) < epsilon_of(1.0, 1.0, 50, 1e-5)
    assert epsilon_of(0.1, 2.0, 50, 1e-5) < epsilon_of(0.1, 1.0, 50, 1e-5)
    # the improved conversion (Balle et al. 2020) is never worse than the classic one
    assert epsilon_of(0.1, 1.0, 50, 1e-5) < epsilon_of(0.1, 1.0, 50, 1e-5, conversion="classic")


def test_edge_cases():
    assert epsilon_of(0.5, 1.0, 0, 1e-5) == 0.0
    assert np.all(rdp_sampled_gaussian(0.0, 1.0) == 0)
    assert epsilon_of(0.5, 0.0, 1, 1e-5) == math.inf
    assert epsilon_of(0.5, 1e-200, 1, 1e-5) == math.inf  # overflowing terms: no privacy, no crash
    assert epsilon_of(1.0, 1e-200, 1, 1e-5) == math.inf


def test_accountant_composes_and_round_trips_its_state():
    acc = RDPAccountant()
    for _ in range(5):
        acc.step(0.2, 1.1)
    acc.step(1.0, 3.0, steps=2)
    assert acc.history == [[0.2, 1.1, 5], [1.0, 3.0, 2]] and acc.steps == 7
    expected_rdp = 5 * rdp_sampled_gaussian(0.2, 1.1) + 2 * rdp_sampled_gaussian(1.0, 3.0)
    assert acc.epsilon(1e-5) == pytest.approx(rdp_to_epsilon(expected_rdp, DEFAULT_ORDERS, 1e-5)[0])
    again = RDPAccountant()
    again.load_state_dict(acc.state_dict())
    assert again.epsilon(1e-5) == acc.epsilon(1e-5)
    assert RDPAccountant().epsilon(1e-5) == 0.0


@pytest.mark.parametrize("call, message", [
    (lambda: rdp_sampled_gaussian(1.5, 1.0), "sampling rate"),
    (lambda: rdp_sampled_gaussian(0.5, -1.0), "noise_multiplier"),
    (lambda: rdp_sampled_gaussian(0.5, 1.0, orders=[1.0]), "orders"),
    (lambda: epsilon_of(0.5, 1.0, 3, 0.0), "delta"),
    (lambda: epsilon_of(0.5, 1.0, 3, 1e-5, conversion="tight"), "conversion"),
    (lambda: RDPAccountant().step(0.5, 1.0, steps=-1), "steps"),
])
def test_invalid_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
