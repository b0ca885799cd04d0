"""A Flower app whose server aggregates with a flhelpers defense (see ../README.md)."""
