"""flhelpers_lab: the paper's studies over the ``flhelpers`` library.

The library (``flhelpers``) runs federated learning with attacks and defenses; this lab uses it
to reproduce the LFighter paper and to study what it found. It imports ``flhelpers``, never the
reverse (tests/test_architecture.py holds it).

* :mod:`~flhelpers_lab.paper` - the paper's plans per benchmark and profile, its figure
  readings, and the comparisons a notebook prints;
* :mod:`~flhelpers_lab.table3` - the journal's Table 3 beside the runs: its cells, the shape
  checks, ``table3.md`` (its written reasons are ``docs/findings/table3.md``);
* :mod:`~flhelpers_lab.store` - where results live: the committed ``medium`` store and the working copies;
* :mod:`~flhelpers_lab.reproduce` - the notebooks run headless (``python -m flhelpers_lab reproduce``);
* :mod:`~flhelpers_lab.benchmark` - what the three benchmark notebooks (one template) show;
* :mod:`~flhelpers_lab.beyond` (with :mod:`~flhelpers_lab.beyond_plan` and
  :mod:`~flhelpers_lab.beyond_analysis`), :mod:`~flhelpers_lab.related`, :mod:`~flhelpers_lab.privacy` -
  the Beyond, Related and Privacy notebooks' studies;
* :mod:`~flhelpers_lab.compute` - computes the committed plan's missing runs
  (``python -m flhelpers_lab study compute``); :mod:`~flhelpers_lab.lfighter_record` - LFighter's
  per-round record, a recorder of the grid runner;
* :mod:`~flhelpers_lab.investigations` - one module per investigation, each with its own
  ``main`` (``python -m flhelpers_lab study --list``);
* :mod:`~flhelpers_lab.plots` - the studies' figures;
* :mod:`~flhelpers_lab.findings` - reads the written findings of ``docs/findings/``;
  :mod:`~flhelpers_lab.docsite` (with :mod:`~flhelpers_lab.docsite_hooks` and
  :mod:`~flhelpers_lab.docsite_markup`) - the documentation site's generated pages (``make docs``).

Findings and their reasons are written in ``docs/``, not here.
"""
