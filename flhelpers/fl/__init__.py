"""Federated learning itself: the round loop and how the peers of a round are run.

* :mod:`~flhelpers.fl.engine` - Algorithm 1 of the paper: local training, the ``K x D`` updates,
  an attack, a defense, evaluation; ``run_experiment`` resumes and stores a run.
* :mod:`~flhelpers.fl.training` - what a peer computes, and the sequential backend (peers one by one).
* :mod:`~flhelpers.fl.vectorized` - every peer of a round in one ``torch.func.vmap`` step.
* :mod:`~flhelpers.fl.guards` - the server's guards against hostile updates (non-finite rows,
  aggregates that would break the model).
* :mod:`~flhelpers.fl.checkpoint` - a run's state after each round, saved and restored.
* :mod:`~flhelpers.fl.device` - float32 precision and the deterministic mode on CUDA, and their record.
* :mod:`~flhelpers.fl.grid` - grids of runs (reuse, resume), locally
  (:mod:`~flhelpers.fl.executors`) or on Ray (:mod:`~flhelpers.fl.ray_executor`).
"""
