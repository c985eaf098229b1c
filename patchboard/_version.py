"""The release's version, its one source: the build reads it (pyproject.toml)."""

__version__ = "0.1.0"
