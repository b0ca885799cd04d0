"""What each notebook runs: plans of runs, the paper's numbers beside ours, tables.

* :mod:`~flhelpers.studies.paper` - the benchmark notebooks (MNIST, CIFAR10, IMDB): each profile's
  grid, the paper's Table 3 and figure readings, the findings checks, the benchmark tables.
* :mod:`~flhelpers.studies.gradients` - the paper's gradient analyses (PCA views, magnitudes,
  the good and the bad update; Figs 1-6, Table 1).
* :mod:`~flhelpers.studies.reference` - the committed ``medium`` runs and ``table3.md``.
* :mod:`~flhelpers.studies.related` - the Related notebook (FFL, user elimination, Krum under IPM).
* :mod:`~flhelpers.studies.privacy` - the Privacy notebook (inversion, the accuracy cost of DP).
* :mod:`~flhelpers.studies.tables` - defenses x ratios tables, Markdown, files.
"""
