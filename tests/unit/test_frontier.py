"""The orphan sweep's "is every consumer keeping up" rule, on a fake clock: what a record processor's
progress report vouches for (``processors.frontier.ConsumerPosition``), and when the sweep counts a shard
as behind (``behind``, ``worker.sweep.consumer_frontier``), without reading the stream."""

from __future__ import annotations

import pytest

from devtools.settings import settings_from
from processors.frontier import (
    PROGRESS_PREFIX,
    Behind,
    BehindReason,
    ConsumerPosition,
    ShardProgress,
    behind,
    progress_item,
    progress_key,
    progress_of,
)
from processors.pseudonymize import is_vehicle
from tests.conftest import TEST_ENV
from tests.support.fakes import MemoryProgress
from worker.leases import Lease
from worker.sweep import consumer_frontier, skip_limit_ms

SHARD = "shardId-000000000001"
T0 = 1_764_547_200_000
LIMIT = (300 + 60 + 10) * 1000
"""The sweep's limit at the shipped defaults: a trip gap past one checkpoint interval and its spread (a
report vouches for what was received when its checkpoint was called for, and is written once that is)."""


def test_the_limit_is_a_gap_past_one_checkpoint_interval_and_its_spread() -> None:
    settings = settings_from(TEST_ENV)
    assert (settings.trip_gap_seconds, settings.checkpoint_every_seconds) == (300, 60.0)
    assert skip_limit_ms(settings) == LIMIT
    assert skip_limit_ms(settings.model_copy(update={"trip_gap_seconds": 60})) == 130_000
    assert skip_limit_ms(settings.model_copy(update={"checkpoint_every_seconds": 0.0})) == 300_000
    # The allowed lateness no longer counts: it is how far a checkpoint trails what was received, and the
    # reports measure what was received.
    assert skip_limit_ms(settings.model_copy(update={"trip_lateness_seconds": 600})) == LIMIT


def test_a_lagging_poll_vouches_for_the_records_received_only() -> None:
    position = ConsumerPosition()
    assert position.progress(SHARD, T0) is None, "nothing received, never caught up: nothing to report"
    # A backlog: records that arrived 10 min ago, the daemon says we are 10 min behind.
    position.polled([T0 - 600_000, T0 - 599_000], millis_behind=599_000, now_ms=T0)
    report = position.progress(SHARD, T0 + 500)
    assert report == ShardProgress(SHARD, T0 + 500, T0 - 599_000, None, 599_000)
    assert report.through_ms == T0 - 599_000


def test_a_caught_up_poll_vouches_for_everything_before_it_even_on_a_quiet_shard() -> None:
    position = ConsumerPosition()
    position.polled([T0 - 3_600_000], millis_behind=0, now_ms=T0)  # the only record, an hour old
    position.polled([], millis_behind=0, now_ms=T0 + 60_000)
    report = position.progress(SHARD, T0 + 60_100)
    assert report is not None and report.through_ms == T0 + 60_000
    # Behind again (a burst): the last caught-up poll still vouches for what arrived before it.
    position.polled([T0 + 61_000], millis_behind=4_000, now_ms=T0 + 65_000)
    position.polled([], millis_behind=None, now_ms=T0 + 66_000)  # not reported: not caught up
    report = position.progress(SHARD, T0 + 66_100)
    assert report is not None and (report.through_ms, report.millis_behind) == (T0 + 61_000, None)


def test_a_shard_end_is_reported_even_without_a_poll() -> None:
    report = ConsumerPosition().progress(SHARD, T0, ended=True)
    assert report == ShardProgress(SHARD, T0, ended=True)
    assert behind(SHARD, report, T0 + 10 * LIMIT, LIMIT) is None, "nothing of the shard can come any more"


def test_a_consumer_that_keeps_up_is_never_behind_and_one_that_dies_is_within_the_limit() -> None:
    """Reports every 60 s (the checkpoint interval), each after a caught-up poll; then the process dies."""
    position = ConsumerPosition()
    report = None
    for minute in range(10):
        now = T0 + minute * 60_000
        position.polled([now - 200], millis_behind=0, now_ms=now)
        report = position.progress(SHARD, now + 1_500)  # the checkpoint's flush took 1.5 s
        for second in range(0, 61, 5):  # whenever the sweep runs before the next report
            assert behind(SHARD, report, now + second * 1000, LIMIT) is None
    assert report is not None and report.through_ms is not None
    through, died = report.through_ms, report.written_ms
    assert through == died - 1_500
    assert behind(SHARD, report, through + LIMIT, LIMIT) is None, "up to the limit: keeps up"
    late = behind(SHARD, report, through + LIMIT + 1, LIMIT)
    assert late == Behind(SHARD, BehindReason.LAGGING, LIMIT + 1), "a report that old vouches too little"
    assert behind(SHARD, report, died + LIMIT + 1, LIMIT) == Behind(
        SHARD, BehindReason.NOT_REPORTING, LIMIT + 1 + 1_500
    )


def test_a_consumer_that_reports_but_lags_is_behind_once_its_records_are_older_than_the_limit() -> None:
    position = ConsumerPosition()
    position.polled([T0 - LIMIT], millis_behind=LIMIT, now_ms=T0)
    report = position.progress(SHARD, T0)
    assert behind(SHARD, report, T0, LIMIT) is None, "exactly the limit: not behind"
    assert behind(SHARD, report, T0 + 1, LIMIT) == Behind(SHARD, BehindReason.LAGGING, LIMIT + 1)


def test_no_report_or_one_vouching_for_nothing_is_behind() -> None:
    assert behind(SHARD, None, T0, LIMIT) == Behind(SHARD, BehindReason.NO_PROGRESS, None)
    assert behind(SHARD, ShardProgress(SHARD, T0, millis_behind=5), T0, LIMIT) == Behind(
        SHARD, BehindReason.NO_PROGRESS, None
    )


def lease(shard: str, checkpoint: str | None) -> Lease:
    return Lease(shard, "worker-1", checkpoint, 0)


def test_the_sweep_checks_every_leased_unended_shard_and_names_the_furthest_behind() -> None:
    store = MemoryProgress()
    now = T0 + 3_600_000
    fresh = ShardProgress("shardId-000000000000", now - 20_000, caught_up_ms=now - 21_000, millis_behind=0)
    lagging = ShardProgress("shardId-000000000001", now - 5_000, last_arrival_ms=now - LIMIT - 60_000)
    dead = ShardProgress("shardId-000000000002", now - LIMIT - 1_000, caught_up_ms=now - LIMIT - 2_000)
    ended = ShardProgress("shardId-000000000004", T0, ended=True)
    for report in (fresh, lagging, dead, ended):
        store.record(report)
    leases = {
        "shardId-000000000000": lease("shardId-000000000000", "49000"),
        "shardId-000000000001": lease("shardId-000000000001", "49001"),
        "shardId-000000000002": lease("shardId-000000000002", "49002"),
        "shardId-000000000003": lease("shardId-000000000003", "SHARD_END"),  # no report: never asked
        "shardId-000000000004": lease("shardId-000000000004", "49004"),  # ended, its checkpoint not yet
    }
    frontier = consumer_frontier(leases, store, now, LIMIT)
    assert (frontier.shards, frontier.behind_shards, frontier.requests) == (4, 2, 1)
    assert frontier.behind == Behind("shardId-000000000001", BehindReason.LAGGING, LIMIT + 60_000)

    leases["shardId-000000000005"] = lease("shardId-000000000005", "TRIM_HORIZON")  # a new lease
    frontier = consumer_frontier(leases, store, now, LIMIT)
    assert frontier.behind == Behind("shardId-000000000005", BehindReason.NO_PROGRESS, None)

    healthy = {"shardId-000000000000": leases["shardId-000000000000"]}
    assert consumer_frontier(healthy, store, now, LIMIT).behind is None
    assert consumer_frontier({}, store, now, LIMIT) == consumer_frontier(
        {"shardId-000000000003": leases["shardId-000000000003"]}, store, now, LIMIT
    )


@pytest.mark.parametrize(
    "report",
    [
        ShardProgress(SHARD, T0, T0 - 5, T0 - 1, 0),
        ShardProgress(SHARD, T0, None, None, None, ended=True),
    ],
)
def test_a_report_is_stored_under_a_key_no_vehicle_can_have_and_read_back_whole(
    report: ShardProgress,
) -> None:
    item = progress_item(report)
    assert item.pseudoVin == progress_key(SHARD) == PROGRESS_PREFIX + SHARD == "_meta#progress#" + SHARD
    assert not is_vehicle(item.pseudoVin)
    assert progress_of(item) == report
