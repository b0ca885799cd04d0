"""One module per investigation of the paper's findings, each with its own ``main``.

``python -m flhelpers_lab study --list`` names them; ``docs/`` holds what each found.
"""
