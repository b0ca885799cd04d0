"""Every flhelpers defense as a Flower strategy, and a ClientApp that trains our benchmark models.

For Flower's Message API (``flwr.serverapp``, ``flwr.clientapp``; Flower >= 1.42)::

    from flhelpers.flower import robust_strategy
    strategy = robust_strategy("lfighter", model=net, fraction_train=1.0)   # any registered rule
    result = strategy.start(grid, ArrayRecord(net.state_dict()), num_rounds=3)

:func:`robust_strategy` returns a :class:`RobustStrategy`: Flower's FedAvg for sampling and
configuration, whose ``aggregate_train`` stacks the clients' replies into our ``K x D`` updates,
builds the rule's :class:`~flhelpers.defenses.base.AggregationContext` from the model, and
reports the accepted peers and the rule's ``info`` in the round's metrics
(:mod:`flhelpers.flower.strategy`). :func:`make_client_app` and :func:`make_server_app` build
the apps of ``examples/flower`` (:mod:`flhelpers.flower.apps`).

Flower is an optional extra: ``pip install -e ".[flower]"``.
"""

from __future__ import annotations

#: what to run when Flower is missing
FLOWER_INSTALL = 'pip install -e ".[flower]"'


def require_flower() -> None:
    """Raise an ImportError that names the install command when Flower is missing."""
    try:
        import flwr  # noqa: F401
        from flwr.serverapp.strategy import FedAvg  # noqa: F401  (the Message API, Flower >= 1.42)
    except ImportError as exc:
        raise ImportError(f"flhelpers.flower needs Flower >= 1.42 with its Message API (flwr.serverapp), "
                          f"which is not installed here. Install the extra: {FLOWER_INSTALL}") from exc


require_flower()

from flhelpers.flower.apps import (  # noqa: E402
    experiment_config,
    federation,
    make_client_app,
    make_server_app,
)
from flhelpers.flower.strategy import (  # noqa: E402
    RobustStrategy,
    layout_from_arrays,
    robust_strategy,
    stack_updates,
)

__all__ = ["FLOWER_INSTALL", "RobustStrategy", "experiment_config", "federation", "layout_from_arrays",
           "make_client_app", "make_server_app", "require_flower", "robust_strategy", "stack_updates"]
