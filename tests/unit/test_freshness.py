"""The freshness budget on a fake clock: the daemon polls every 250 ms, ``process_records`` flushes what
is due, a checkpoint every 60 s flushes everything. Deadlines hold, a vehicle is written at most once per
B, a 1 Hz vehicle costs one write per two records, and nothing pending passes a checkpoint."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from schemas.records import KinesisRecord, StreamPosition, VehicleReading
from worker.config import Settings
from worker.freshness import TrailBuffer, VehicleStateBuffer

SHARD = "shardId-000000000000"
POLL_MS = 250
GETRECORDS_MS = 30
WRITE_MS = 50
CHECKPOINT_MS = 60_000


def record(pseudo_vin: str, index: int, arrival_ms: int) -> tuple[VehicleReading, KinesisRecord]:
    position = StreamPosition(SHARD, str(index + 1), 0, arrival_ms)
    reading = VehicleReading(pseudo_vin, arrival_ms - 200, {"vehicleSpeed": float(index % 50)}, position)
    return reading, KinesisRecord(b"{}", pseudo_vin, position)


@dataclass
class Write:
    pseudo_vin: str
    taken_ms: int
    arrivals: list[int]
    checkpoint: bool

    @property
    def lands_ms(self) -> int:
        return self.taken_ms + WRITE_MS


@dataclass
class Run:
    writes: list[Write] = field(default_factory=list)
    records: int = 0
    pending_at_checkpoints: list[int] = field(default_factory=list)


def simulate(
    budget_ms: int, vehicles: int, seconds: int, hz: float = 1.0, start_ms: int = 0, backlog_ms: int = 0
) -> Run:
    """``vehicles`` sending at ``hz``, phases spread over a second; the stream holds records arriving from
    ``start_ms``; the consumer starts polling at ``backlog_ms`` (a backlog to catch up on)."""
    settings = Settings(kcl_idle_time_between_reads_millis=POLL_MS, state_max_delay_ms=budget_ms)
    lead = settings.state_flush_lead_ms
    buffer = VehicleStateBuffer(settings.state_max_delay_ms)
    period = int(1000 / hz)
    stream = sorted(
        (start_ms + k * period + v * period // vehicles, f"{v:032x}")
        for v in range(vehicles)
        for k in range(int(seconds * hz))
    )
    run, delivered, last_checkpoint = Run(), 0, backlog_ms
    now = backlog_ms
    while delivered < len(stream) or len(buffer):
        # One GetRecords: what arrived by the call, handed over GETRECORDS_MS later.
        receipt = now + GETRECORDS_MS
        while delivered < len(stream) and stream[delivered][0] <= now:
            arrival, pseudo_vin = stream[delivered]
            buffer.absorb(*record(pseudo_vin, delivered, arrival), receipt)
            delivered += 1
            run.records += 1
        checkpoint = receipt - last_checkpoint >= CHECKPOINT_MS
        taken = buffer.take_all(receipt) if checkpoint else buffer.take_due(receipt, lead)
        for pending in taken:
            arrivals = [reading.position.arrival_ms for reading, _ in pending.readings]
            run.writes.append(Write(pending.update.pseudo_vin, receipt, arrivals, checkpoint))
        if checkpoint:
            run.pending_at_checkpoints.append(len(buffer))
            last_checkpoint = receipt
        now += POLL_MS
        assert now < start_ms + seconds * 1000 + backlog_ms + 60_000, "the buffer never drained"
    return run


def test_a_1_hz_vehicle_is_written_every_two_records_within_its_budget() -> None:
    run = simulate(budget_ms=1800, vehicles=20, seconds=600)
    assert sum(len(w.arrivals) for w in run.writes) == run.records
    for write in run.writes:
        assert write.lands_ms <= min(write.arrivals) + 1800, "a record's state landed after its budget"
    by_vehicle: dict[str, list[Write]] = {}
    for write in run.writes:
        by_vehicle.setdefault(write.pseudo_vin, []).append(write)
    for writes in by_vehicle.values():
        times = [w.taken_ms for w in writes if not w.checkpoint]
        assert all(b - a >= 1800 for a, b in itertools.pairwise(times)), "two writes within B"
    timed = [w for w in run.writes if not w.checkpoint]
    assert {len(w.arrivals) for w in timed} == {2}
    per_record = len(run.writes) / run.records
    # 2 records a write, plus the checkpoint flush every 60 s (at most one more write a vehicle).
    assert 0.5 <= per_record <= 0.5 + 1 / 60
    assert run.pending_at_checkpoints and set(run.pending_at_checkpoints) == {0}


def test_a_budget_of_one_second_writes_every_record() -> None:
    # Proposal D1: at 1 Hz, B = 1000 leaves the second record no time to join the first.
    run = simulate(budget_ms=1000, vehicles=5, seconds=120)
    assert len(run.writes) == run.records


def test_a_backlog_coalesces_and_is_written_within_one_budget_of_its_receipt() -> None:
    # The consumer starts 10 minutes behind: every record is received past its arrival + B.
    run = simulate(budget_ms=1800, vehicles=5, seconds=300, backlog_ms=600_000)
    first = [w for w in run.writes if not w.checkpoint][:5]
    assert all(len(w.arrivals) > 100 for w in first), "the backlog of a vehicle is one write"
    assert all(w.taken_ms <= 600_000 + GETRECORDS_MS + 1800 for w in first)
    assert len(run.writes) / run.records < 0.05


@pytest.mark.parametrize("budget", [0])
def test_a_budget_of_zero_writes_at_every_poll(budget: int) -> None:
    run = simulate(budget_ms=budget, vehicles=3, seconds=30)
    assert all(w.taken_ms - GETRECORDS_MS - min(w.arrivals) <= POLL_MS for w in run.writes)


# --- trail buckets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Merge:
    """A stand-in for ``processors.trail.BucketMerge``: slots max-merged, expiry a max-register."""

    pseudo_vin: str
    bucket: int
    slots: tuple[tuple[str, str], ...]
    expires_at: int


def combine(a: Merge, b: Merge) -> Merge:
    slots = dict(a.slots)
    for slot, value in b.slots:
        slots[slot] = max(slots.get(slot, value), value)
    return Merge(a.pseudo_vin, a.bucket, tuple(sorted(slots.items())), max(a.expires_at, b.expires_at))


def test_pending_bucket_merges_combine_per_key_and_come_due_by_event_time_or_delay() -> None:
    trail: TrailBuffer[Merge] = TrailBuffer(combine, bucket_seconds=15, max_delay_ms=15_000)
    trail.add([Merge("v", 1500, (("3", "b"),), 10)], receipt_ms=0)
    trail.add([Merge("v", 1500, (("3", "a"), ("4", "c")), 12)], receipt_ms=400)
    trail.add([Merge("w", 1500, (("0", "x"),), 10)], receipt_ms=500)
    trail.observe("v", 1_514_999)
    trail.observe("w", 1_500_000)
    assert trail.take_due(now_ms=1000) == []
    trail.observe("v", 1_515_000)  # v's newest record is past the bucket's end: complete
    assert trail.take_due(now_ms=1000) == [Merge("v", 1500, (("3", "b"), ("4", "c")), 12)]
    assert trail.take_due(now_ms=15_499) == []
    assert [m.pseudo_vin for m in trail.take_due(now_ms=15_500)] == ["w"]  # 15 s after its first crumb
    trail.add([Merge("v", 1500, (("5", "late"),), 13)], receipt_ms=20_000)  # a late crumb: a new merge
    assert len(trail) == 1 and trail.take_all() == [Merge("v", 1500, (("5", "late"),), 13)]


def test_a_vehicle_is_not_written_again_within_b_even_when_a_record_is_received_just_after_a_write() -> None:
    buffer = VehicleStateBuffer(1800)
    buffer.absorb(*record("v", 0, 0), receipt_ms=30)
    (_first,) = buffer.take_due(now_ms=1500, lead_ms=350)
    buffer.absorb(*record("v", 1, 1400), receipt_ms=1530)  # arrived before that write, received after
    assert buffer.take_due(now_ms=2900, lead_ms=350) == []  # its deadline - lead, but within B of 1500
    (second,) = buffer.take_due(now_ms=3300, lead_ms=350)
    assert [r.position.arrival_ms for r, _ in second.readings] == [1400]
    assert len(buffer) == 0
