"""The moto server wrapper: the simulator's, :mod:`pullboot.sim.s3` (one implementation)."""

from pullboot.sim.s3 import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY, MotoServer

__all__ = ["DUMMY_ACCESS_KEY", "DUMMY_SECRET_KEY", "MotoServer"]
