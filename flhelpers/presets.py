"""The paper's benchmarks (paper section 6.1) and their shorter profiles.

``BENCHMARKS[name]`` holds the ``paper`` profile; ``MEDIUM[name]`` and ``QUICK[name]`` the
overrides of the ``medium`` profile (the paper's structure, shortened only in time) and the
``quick`` profile (a smoke-scale run in minutes on 2 CPU cores).

Where the paper's text and the authors' released notebooks (najeebjebreel/LFighter) disagree,
``paper`` follows the notebooks, which produced the published numbers. Each value names its
source in a tag: "text" = paper section 6.1; "nb" = the authors' notebook of that benchmark;
"src" = the authors' ``src/environment_federated.py``; "T3" = the journal's Table 3. The
evidence behind each choice and the measurements behind the shorter profiles:
``docs/findings/presets.md``.
"""

from __future__ import annotations

from typing import Any

#: the paper's attacker ratios (section 6.1): the default axis of a grid
PAPER_RATIOS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)

# The paper's benchmarks (section 6.1); sources and evidence: docs/findings/presets.md, "paper".
_MNIST = dict(dataset="mnist", model="mnist-cnn",
              rounds=200,           # text, nb
              local_epochs=3,       # text, nb
              batch_size=64,        # text, nb
              drop_last=True,       # src (DataLoader(..., drop_last=True); the text is silent)
              optimizer="sgd",      # text, nb
              lr=0.01,              # Mild: nb (najeebjebreel/LFighter), T3; iid/Extreme override below
              momentum=0.9,         # text, nb
              weight_decay=5e-4,    # nb (the text is silent)
              source_class=7, target_class=1,  # text
              num_peers=100)        # text, nb
_CIFAR = dict(dataset="cifar10", model="resnet18",
              rounds=100,           # text, nb
              local_epochs=3,       # text, nb
              batch_size=32,        # text, nb
              drop_last=True,       # src (DataLoader(..., drop_last=True); the text is silent)
              optimizer="sgd",      # text, nb
              lr=0.01,              # text, nb
              momentum=0.9,         # text, nb
              weight_decay=5e-4,    # nb (the text is silent)
              source_class=5, target_class=3,  # text: dog -> cat
              num_peers=20,         # text, nb
              dataset_kwargs={"train_batches": 5})  # text: all 50,000 images (the id says so)
_IMDB = dict(dataset="imdb", model="bilstm",
             rounds=50,             # text, nb
             local_epochs=1,        # text, nb
             batch_size=32,         # text, nb
             drop_last=True,        # src (DataLoader(..., drop_last=True); the text is silent)
             optimizer="adam",      # text, nb
             lr=0.001,              # text, nb
             momentum=0.0,          # Adam: unused
             loss="bce_with_logits",  # text
             source_class=1, target_class=0,  # text: positive -> negative
             num_peers=20,          # text, nb
             partition="iid")       # text, nb

BENCHMARKS: dict[str, dict[str, Any]] = {
    "mnist-iid": {**_MNIST, "partition": "iid",
                  "lr": 0.001},  # text; nb anonymized30/LF-Fighter Experiments_MNIST_IID.ipynb
    "mnist-mild": {**_MNIST, "partition": "dirichlet", "dirichlet_alpha": 1.0},
    "mnist-extreme": {**_MNIST, "partition": "extreme",
                      "lr": 0.001},  # text; nb anonymized30/LF-Fighter Experiments_MNIST_EXTREME_NON_IID.ipynb
    "cifar10-iid": {**_CIFAR, "partition": "iid"},
    "cifar10-mild": {**_CIFAR, "partition": "dirichlet", "dirichlet_alpha": 1.0},
    "imdb": dict(_IMDB),
}

# Medium profile (the paper's structure, shortened in time); evidence: docs/findings/presets.md, "medium".
_MEDIUM_MNIST = dict(rounds=40, local_epochs=1, drop_last=False, lr=0.01)
MEDIUM: dict[str, dict[str, Any]] = {
    "mnist-iid": dict(_MEDIUM_MNIST),
    "mnist-mild": dict(_MEDIUM_MNIST),
    "mnist-extreme": {**_MEDIUM_MNIST, "rounds": 80},
    "cifar10-iid": dict(rounds=25, local_epochs=1),
    "cifar10-mild": dict(rounds=25, local_epochs=1),
    "imdb": dict(rounds=4, lr=0.004, drop_last=False),
}

# Quick profile (minutes on 2 CPU cores); evidence: docs/findings/presets.md, "quick".
_QUICK_MNIST = dict(num_peers=20, rounds=15, local_epochs=1, lr=0.05, train_subset=8000, test_subset=2000,
                    drop_last=False)
_QUICK_CIFAR = dict(num_peers=10, rounds=4, local_epochs=1, train_subset=2000, test_subset=1000,
                    dataset_kwargs={})
QUICK: dict[str, dict[str, Any]] = {
    "mnist-iid": dict(_QUICK_MNIST),
    "mnist-mild": dict(_QUICK_MNIST),
    "mnist-extreme": {**_QUICK_MNIST, "num_peers": 50, "rounds": 40, "lr": 0.1, "train_subset": 6400},
    "cifar10-iid": dict(_QUICK_CIFAR),
    "cifar10-mild": dict(_QUICK_CIFAR),
    "imdb": dict(num_peers=10, rounds=5, train_subset=6000, test_subset=1000, drop_last=False,
                 dataset_kwargs={"vocab_size": 10000, "max_len": 64}),
}
