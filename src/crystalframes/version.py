"""The package version, in a module of its own so that modules can read it without importing
the package's ``__init__`` from inside it (an import cycle)."""

__version__ = "0.1.0"  # the same as pyproject.toml's [project] version (tests/test_dependencies.py)
