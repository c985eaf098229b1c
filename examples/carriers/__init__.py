"""A stand-in for the carriers' rate APIs (see :mod:`examples.carriers.app`)."""
