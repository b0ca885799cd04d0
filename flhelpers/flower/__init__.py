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

from flhelpers.optional import import_optional

#: what to run when Flower is missing
FLOWER_INSTALL = 'pip install -e ".[flower]"'


def require_flower() -> None:
    """Raise an ImportError that names the install command when Flower is missing."""
    # flwr.serverapp.strategy: the Message API, Flower >= 1.42
    import_optional(("flwr", "flwr.serverapp.strategy"),
                    "flhelpers.flower needs Flower >= 1.42 with its Message API (flwr.serverapp), which is not "
                    f"installed here. Install the extra: {FLOWER_INSTALL}")


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
