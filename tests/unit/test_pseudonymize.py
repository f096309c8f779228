from __future__ import annotations

import hashlib
import hmac

import pytest

from processors.pseudonymize import Pseudonymizer

VIN = "5YJ3E1EA7KF317000"


def test_pseudo_vin_is_the_truncated_hmac_of_the_normalized_vin() -> None:
    expected = hmac.new(b"k3y", VIN.encode(), hashlib.sha256).hexdigest()[:32]
    assert Pseudonymizer(b"k3y").pseudo_vin(VIN) == expected


def test_pseudo_vin_shape_and_key_dependence() -> None:
    a, b = Pseudonymizer(b"key-a").pseudo_vin(VIN), Pseudonymizer(b"key-b").pseudo_vin(VIN)
    assert len(a) == 32 and a == a.lower() and int(a, 16) >= 0
    assert a != b
    assert VIN not in repr(Pseudonymizer(b"key-a"))


def test_distinct_vins_give_distinct_pseudo_vins() -> None:
    p = Pseudonymizer(b"key")
    vins = [f"5YJ3E1EA7KF{n:06d}" for n in range(2000)]
    assert len({p.pseudo_vin(v) for v in vins}) == 2000


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Pseudonymizer(b"")
