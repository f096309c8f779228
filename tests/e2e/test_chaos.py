"""A short slice of the chaos suite (``make chaos`` runs all of it): the real daemon, something breaks,
and everything the worker wrote must equal one clean pass."""

from __future__ import annotations

import pytest

from devtools.local_aws import LocalAws
from tests.support import chaos
from worker.replay import StreamEntry


@pytest.fixture(scope="module")
def stream() -> list[StreamEntry]:
    return chaos.fleet(vehicles=6, minutes=3)


def test_throttled_and_failing_aws_calls_lose_and_duplicate_nothing(
    local_aws: LocalAws, stream: list[StreamEntry]
) -> None:
    result = chaos.throttling(local_aws, stream)
    assert result.faults > 0
    assert result.digest_equal, result.row()


def test_a_killed_task_restarts_from_its_checkpoint(local_aws: LocalAws, stream: list[StreamEntry]) -> None:
    result = chaos.kills(local_aws, stream, kill_count=1, tasks=2)  # make chaos: one task, ten kills
    assert result.kills == result.restarts == 1
    assert result.digest_equal, result.row()


def test_the_surviving_task_takes_over_a_dead_tasks_shards(
    local_aws: LocalAws, stream: list[StreamEntry]
) -> None:
    result = chaos.failover(local_aws, stream, kill_leader=False)  # make chaos kills the leader
    print(result.row())  # the split and the takeover time, with -s
    assert any(note.startswith("takeover") for note in result.notes)
    assert any("was not the KCL leader" in note for note in result.notes), result.row()
    assert result.digest_equal, result.row()


def test_poison_pills_on_one_shard_stop_no_task_and_land_every_good_record(local_aws: LocalAws) -> None:
    result = chaos.poison_pill(local_aws, chaos.fleet(vehicles=8, minutes=1, seed=5))
    print(result.row())
    assert result.restarts == 0, result.row()  # no task stopped, so none was replaced
    assert result.healthy, result.row()  # one dead letter per deep record, no processor exit, signals in
    assert result.digest_equal, result.row()  # every good record as in one clean pass
