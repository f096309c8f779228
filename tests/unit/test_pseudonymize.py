from __future__ import annotations

import hashlib
import hmac

import pytest

from processors.batch import WritePlan
from processors.errors import PseudonymKeyMismatch, StaleTripState
from processors.pseudonymize import (
    PSEUDONYM_KEY_ITEM,
    Pseudonymizer,
    check_fingerprint,
    is_vehicle,
    key_fingerprint,
)
from processors.trips import TripThresholds
from tests.support.fakes import memory_stores
from worker.executor import PlanExecutor
from worker.trip_commit import Replanned

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


# --- the key's fingerprint ------------------------------------------------------------------------------


def test_the_fingerprint_is_a_keyed_hash_of_a_fixed_message_never_the_key() -> None:
    key = b"a pseudonymization key"
    expected = hmac.new(key, b"fleet-ingest pseudonym-key fingerprint v1", hashlib.sha256).hexdigest()[:32]
    assert key_fingerprint(key) == Pseudonymizer(key).fingerprint() == expected
    assert key.hex() not in expected and key_fingerprint(b"another key") != expected


def test_a_matching_fingerprint_passes_and_others_refuse_in_one_line() -> None:
    loaded = key_fingerprint(b"loaded")
    check_fingerprint(loaded, loaded)
    recorded = key_fingerprint(b"recorded")
    with pytest.raises(PseudonymKeyMismatch) as mismatch:
        check_fingerprint(recorded, loaded)
    assert str(mismatch.value) == (
        "pseudonym key does not match the key these tables were built with "
        f"(fingerprint {recorded[:8]}… expected, {loaded[:8]}… loaded); refusing to consume"
    )
    with pytest.raises(PseudonymKeyMismatch, match="run python -m worker bootstrap") as absent:
        check_fingerprint(None, loaded)
    assert mismatch.value.exit_code == absent.value.exit_code == 6
    assert "\n" not in str(mismatch.value) + str(absent.value)


def test_meta_items_are_not_vehicles() -> None:
    assert not is_vehicle(PSEUDONYM_KEY_ITEM)
    assert is_vehicle(Pseudonymizer(b"k").pseudo_vin(VIN))


# --- no KMS call for a known vehicle (executor on the in-memory fakes) ----------------------------------


def sightings(count: int, first: int = 0) -> dict[str, str]:
    pseudo = Pseudonymizer(b"key")
    return {pseudo.pseudo_vin(vin): vin for vin in (f"5YJ3E1EA7KF{n:06d}" for n in range(first, count))}


def test_a_restarted_executor_encrypts_only_vehicles_new_to_the_vault() -> None:
    stores = memory_stores()
    fleet = sightings(1000)
    first = PlanExecutor(stores, 4, TripThresholds())
    first.write_now(WritePlan(sightings=dict(fleet)))
    first.close()
    assert stores.vault.encrypts == 1000 and stores.vault.vins == {pv: vin for pv, vin in fleet.items()}

    stores.vault.encrypts = stores.vault.reads = 0
    restarted = PlanExecutor(stores, 4, TripThresholds())  # a new process: it has seen nothing yet
    grown = {**fleet, **sightings(1010, first=1000)}
    for _ in range(2):  # the second batch: every vehicle now seen by this executor, no read at all
        restarted.write_now(WritePlan(sightings=dict(grown)))
    restarted.close()
    assert (stores.vault.encrypts, stores.vault.reads) == (10, 1010)
    assert len(stores.vault.vins) == 1010


def _no_replan(stale: StaleTripState) -> Replanned:
    raise AssertionError("no trip plans here")
