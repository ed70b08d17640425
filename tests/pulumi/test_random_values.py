"""``random_values``: the provider's shapes, with the generator each mock runtime passes.

Pure functions; no engine needed.
"""

from __future__ import annotations

import base64
import random
import secrets
import string

import pytest

from .random_values import SPECIAL, random_id, random_password

pytestmark = pytest.mark.pulumi
SYSTEM = secrets.SystemRandom()


def test_password_as_the_program_asks_letters_and_digits_only() -> None:
    passwords = {random_password({"length": 32.0, "special": False}, SYSTEM) for _ in range(50)}
    assert len(passwords) == 50  # fresh randomness every time
    alphabet = set(string.ascii_letters + string.digits)
    for password in passwords:
        assert len(password) == 32
        assert set(password) <= alphabet
    used = set("".join(passwords))
    assert used & set(string.ascii_uppercase) and used & set(string.digits)


def test_password_defaults_include_the_providers_special_characters() -> None:
    text = "".join(random_password({"length": 64.0}, SYSTEM) for _ in range(20))
    assert set(text) <= set(string.ascii_letters + string.digits + SPECIAL)
    assert set(text) & set(SPECIAL)


def test_password_minimums_and_override_special() -> None:
    for _ in range(20):
        password = random_password({"length": 8.0, "upper": False, "lower": False,
                                    "numeric": False, "overrideSpecial": "#",
                                    "minNumeric": 3.0}, SYSTEM)  # fmt: skip
        assert password.count("#") == 5
        assert sum(c.isdigit() for c in password) == 3


@pytest.mark.parametrize("inputs", [
    {"length": 4.0, "minUpper": 3.0, "minLower": 2.0},
    {"length": 8.0, "upper": False, "lower": False, "numeric": False, "special": False},
    {"length": 0.0},
])  # fmt: skip
def test_password_impossible_inputs_fail(inputs: dict[str, float | bool]) -> None:
    with pytest.raises(ValueError, match="RandomPassword"):
        random_password(inputs, SYSTEM)


def test_random_id_forms_encode_the_same_bytes() -> None:
    resource_id, outputs = random_id({"byteLength": 16.0}, SYSTEM)
    data = base64.b64decode(outputs["b64Std"])
    assert len(data) == 16
    assert resource_id == outputs["b64Url"] == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert outputs["hex"] == data.hex()
    assert int(outputs["dec"]) == int.from_bytes(data, "big")
    assert random_id({"byteLength": 16.0}, SYSTEM)[1]["b64Std"] != outputs["b64Std"]


def test_random_id_prefix_goes_on_every_output_but_the_id() -> None:
    resource_id, outputs = random_id({"byteLength": 4.0, "prefix": "p-"}, SYSTEM)
    assert not resource_id.startswith("p-")
    assert all(value.startswith("p-") for value in outputs.values())
    assert outputs["b64Url"] == "p-" + resource_id


def test_a_seeded_generator_repeats_its_values() -> None:
    """The harness's runs are reproducible: the same seed gives the same password and id."""
    inputs = {"length": 32.0, "special": False}
    same = random_password(inputs, random.Random("a"))
    assert same == random_password(inputs, random.Random("a"))
    assert same != random_password(inputs, random.Random("b"))
    assert random_id({"byteLength": 16.0}, random.Random("a")) == random_id(
        {"byteLength": 16.0}, random.Random("a"))
