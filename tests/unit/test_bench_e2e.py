"""The live scenario's trail figure (``bench.e2e``): which records are crumbs, and how a crumb's lag is
read off the trail sampler's first sightings. What the figures are made of, not how fast anything runs."""

from __future__ import annotations

import math

from bench.e2e import Put, crumb_lags, crumb_times
from bench.stage import BENCH_ENV
from bench.workload import Fleet
from processors.pseudonymize import Pseudonymizer

PSEUDO = Pseudonymizer(BENCH_ENV["FLEET_PSEUDONYM_KEY"].encode())
START_MS = 1_796_000_000_000


def test_every_native_record_is_a_crumb_and_a_tesla_delta_without_a_trail_field_is_not() -> None:
    native = Fleet(3, 1, workload="native").produced(START_MS)
    crumbs = crumb_times(native, PSEUDO)
    assert len(crumbs) == len(native)
    assert all(t == event_ms for (_, event_ms), t in crumbs.items()), "a crumb is at its record's event time"
    tesla = Fleet(3, 1, workload="tesla").produced(START_MS)
    crumbs = crumb_times(tesla, PSEUDO)
    # The first record of each vehicle is its full snapshot (location included); most deltas carry none
    # of the trail's fields.
    firsts = {r.vin: r for r in reversed(tesla)}
    assert all((PSEUDO.pseudo_vin(r.vin), r.event_ms) in crumbs for r in firsts.values())
    assert 0 < len(crumbs) < len(tesla)


def test_a_crumbs_lag_runs_from_its_putrecords_to_the_first_read_that_showed_it() -> None:
    puts = [Put("a", 1_000, sent_at=10.0), Put("a", 2_000, sent_at=11.0), Put("b", 1_000, sent_at=10.0)]
    crumbs = {("a", 1_000): 1_000, ("a", 2_000): 2_000}  # b's record is no crumb
    first_seen = {("a", 1_000): 24.5, ("a", 2_000): 24.5, ("b", 1_000): 12.0}
    assert crumb_lags(first_seen, puts, crumbs) == [14.5, 13.5]
    del first_seen[("a", 2_000)]
    assert crumb_lags(first_seen, puts, crumbs)[1] == math.inf, "a crumb never read is infinitely late"
