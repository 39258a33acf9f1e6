"""The IMDSv2 fake: the simulator's emulator, :mod:`pullboot.sim.imds` (one implementation)."""

from pullboot.sim.imds import (
    IDENTITY_PATH,
    MAX_TTL_S,
    TOKEN_HEADER,
    TOKEN_PATH,
    TTL_HEADER,
    FakeIMDS,
    RequestRecord,
)

__all__ = ["IDENTITY_PATH", "MAX_TTL_S", "TOKEN_HEADER", "TOKEN_PATH", "TTL_HEADER", "FakeIMDS",
           "RequestRecord"]
