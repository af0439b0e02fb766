"""Fakes of the actors, shipped in the package for unit tests and benchmarks."""

from fwd.testing.fakes import *  # noqa: F403
