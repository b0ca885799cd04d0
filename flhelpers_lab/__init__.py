"""flhelpers_lab: the paper's studies over the ``flhelpers`` library.

The library (``flhelpers``) runs federated learning with attacks and defenses; this lab uses it
to reproduce the LFighter paper and to study what it found. It imports ``flhelpers``, never the
reverse (tests/test_architecture.py holds it).

* :mod:`~flhelpers_lab.paper` - the paper's plans per benchmark and profile, its Table 3 and
  figure readings, and the comparisons of a grid with them;
* :mod:`~flhelpers_lab.reference` - the committed ``medium`` store and ``table3.md``;
* :mod:`~flhelpers_lab.reproduce` - the notebooks run headless (``python -m flhelpers_lab reproduce``);
* :mod:`~flhelpers_lab.beyond`, :mod:`~flhelpers_lab.related`, :mod:`~flhelpers_lab.privacy` -
  the Beyond, Related and Privacy notebooks' studies;
* :mod:`~flhelpers_lab.investigations` - one module per investigation, each with its own
  ``main`` (``python -m flhelpers_lab study --list``);
* :mod:`~flhelpers_lab.plots` - the studies' figures.

Findings and their reasons are written in ``docs/``, not here.
"""
