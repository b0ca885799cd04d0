"""The package version (one place; the engine records it in every run's summary)."""

__version__ = "0.1.0"
