"""``pulumi_random`` values made as the provider makes them, for both mock runtimes.

The program-level harness (``harness.py``) passes a generator seeded by the resource name, so
its runs are reproducible; the Docker e2e emulator (``tests/e2e/engine_mocks.py``) passes
``secrets.SystemRandom()``, so its passwords are real ones. The shapes are the provider's:

- ``RandomPassword``: length, upper, lower, numeric (and the deprecated number), special,
  overrideSpecial, minUpper, minLower, minNumeric, minSpecial. The ``min*`` characters first,
  the rest from every enabled set, then shuffled; special characters default to the provider's
  ``!@#$%&*()-_=+[]{}<>:?``. ``bcryptHash`` is not made.
- ``RandomId``: byteLength, prefix. ``id`` is the bytes' unpadded base64url form; ``b64Url``,
  ``b64Std`` (padded), ``hex`` and ``dec`` (big-endian integer) carry ``prefix`` in front.
"""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Mapping
from typing import Any

SPECIAL = "!@#$%&*()-_=+[]{}<>:?"
"""terraform-provider-random's default special characters."""


def random_password(inputs: Mapping[str, Any], rng: random.Random) -> str:
    """A password as the provider makes one: required minimums, the rest from all sets, shuffled."""
    sets = {
        "upper": (string.ascii_uppercase, "minUpper"),
        "lower": (string.ascii_lowercase, "minLower"),
        "numeric": (string.digits, "minNumeric"),
        "special": (inputs.get("overrideSpecial") or SPECIAL, "minSpecial"),
    }
    length = int(inputs["length"])
    enabled = {key: inputs.get(key) is not False for key in sets}
    if inputs.get("number") is False:  # the deprecated spelling of numeric
        enabled["numeric"] = False
    chars: list[str] = []
    for alphabet, minimum in sets.values():
        chars += [rng.choice(alphabet) for _ in range(int(inputs.get(minimum) or 0))]
    pool = "".join(alphabet for key, (alphabet, _) in sets.items() if enabled[key])
    if length < 1 or len(chars) > length or not pool:
        raise ValueError(f"RandomPassword: length {length} below its minimums, or no set enabled")
    chars += [rng.choice(pool) for _ in range(length - len(chars))]
    rng.shuffle(chars)
    return "".join(chars)


def random_id(inputs: Mapping[str, Any], rng: random.Random) -> tuple[str, dict[str, str]]:
    """(id, outputs) of ``byteLength`` random bytes; every output but the id gets ``prefix``."""
    data = rng.randbytes(int(inputs["byteLength"]))
    prefix = inputs.get("prefix") or ""
    url = base64.urlsafe_b64encode(data).decode().rstrip("=")
    return url, {"b64Url": prefix + url, "b64Std": prefix + base64.b64encode(data).decode(),
                 "hex": prefix + data.hex(), "dec": prefix + str(int.from_bytes(data, "big"))}
