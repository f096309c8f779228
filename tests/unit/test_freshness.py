"""The freshness budget on a fake clock: the daemon polls every 250 ms, ``process_records`` flushes what
is due, a checkpoint every 60 s flushes everything. Deadlines hold, a vehicle is written at most once per
B, a 1 Hz vehicle costs one write per two records, and nothing pending passes a checkpoint."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from processors.trail import BucketMerge
from schemas.records import KinesisRecord, Location, SignalValue, StreamPosition, VehicleReading
from worker.config import Settings
from worker.freshness import TrailBuffer, VehicleStateBuffer

SHARD = "shardId-000000000000"
POLL_MS = 250
GETRECORDS_MS = 30
WRITE_MS = 50
CHECKPOINT_MS = 60_000


def record(
    pseudo_vin: str, index: int, arrival_ms: int, speed: float | None = None
) -> tuple[VehicleReading, KinesisRecord]:
    """A record moving its speed (``index % 50``), or reporting ``speed`` and a fixed location."""
    position = StreamPosition(SHARD, str(index + 1), 0, arrival_ms)
    signals: dict[str, SignalValue] = (
        {"vehicleSpeed": float(index % 50)}
        if speed is None
        else {"vehicleSpeed": speed, "location": Location(39.7, -104.9), "shiftState": "P"}
    )
    reading = VehicleReading(pseudo_vin, arrival_ms - 200, signals, position)
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
    budget_ms: int,
    vehicles: int,
    seconds: int,
    hz: float = 1.0,
    start_ms: int = 0,
    backlog_ms: int = 0,
    liveness_ms: int = 0,
    parked: int = 0,
) -> Run:
    """``vehicles`` sending at ``hz``, phases spread over a second; the stream holds records arriving from
    ``start_ms``; the consumer starts polling at ``backlog_ms`` (a backlog to catch up on). The first
    ``parked`` vehicles repeat the same values in every record; the others change their speed in each."""
    settings = Settings(
        kcl_idle_time_between_reads_millis=POLL_MS, state_max_delay_ms=budget_ms, liveness_seconds=0
    )
    lead = settings.state_flush_lead_ms
    buffer = VehicleStateBuffer(settings.state_max_delay_ms, lead, liveness_ms=liveness_ms)
    parked_vins = {f"{v:032x}" for v in range(parked)}
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
            speed = 0.0 if pseudo_vin in parked_vins else None
            buffer.add(*record(pseudo_vin, delivered, arrival, speed), receipt)
            delivered += 1
            run.records += 1
        checkpoint = receipt - last_checkpoint >= CHECKPOINT_MS
        taken = buffer.due(receipt, everything=checkpoint)
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


def located(pseudo_vin: str, t_ms: int, lat: float) -> tuple[VehicleReading, KinesisRecord]:
    position = StreamPosition(SHARD, str(t_ms), 0, t_ms)
    reading = VehicleReading(pseudo_vin, t_ms, {"location": Location(lat, -104.9)}, position)
    return reading, KinesisRecord(b"{}", pseudo_vin, position)


def slots(merge: BucketMerge) -> list[str]:
    return sorted(merge.slots)


def test_pending_bucket_merges_join_per_key_and_come_due_by_event_time_or_delay() -> None:
    trail = TrailBuffer(bucket_seconds=15, max_delay_ms=15_000)
    trail.add(*located("v", 1_500_030, 39.7), now_ms=0)
    trail.add(*located("v", 1_500_040, 39.8), now_ms=400)
    trail.add(*located("w", 1_500_000, 39.9), now_ms=500)
    trail.add(*located("v", 1_514_999, 39.7), now_ms=600)
    assert trail.due(now_ms=1000, everything=False) == []
    trail.add(
        VehicleReading("v", 1_515_000, {}, StreamPosition(SHARD, "9", 0, 0)),
        KinesisRecord(b"", "v", StreamPosition(SHARD, "9", 0, 0)),
        now_ms=700,
    )  # no crumb, but v is past the bucket's end: complete
    (complete,) = trail.due(now_ms=1000, everything=False)
    assert (complete.pseudo_vin, complete.bucket, slots(complete)) == ("v", 1500, ["1499", "3", "4"])
    assert trail.due(now_ms=15_499, everything=False) == []
    assert [m.pseudo_vin for m in trail.due(now_ms=15_500, everything=False)] == ["w"]  # 15 s after its first
    trail.add(*located("v", 1_500_050, 39.7), now_ms=20_000)  # a late crumb: a new merge of the bucket
    assert len(trail) == 1 and [slots(m) for m in trail.due(now_ms=20_001, everything=True)] == [["5"]]


def test_a_vehicle_is_not_written_again_within_b_even_when_a_record_is_received_just_after_a_write() -> None:
    buffer = VehicleStateBuffer(1800, lead_ms=350)
    buffer.add(*record("v", 0, 0), now_ms=30)
    (_first,) = buffer.due(1500, everything=False)
    buffer.add(*record("v", 1, 1400), now_ms=1530)  # arrived before that write, received after
    assert buffer.due(2900, everything=False) == []  # its deadline - lead, but within B of 1500
    (second,) = buffer.due(3300, everything=False)
    assert [r.position.arrival_ms for r, _ in second.readings] == [1400]
    assert len(buffer) == 0


# --- liveness: records that change no value -------------------------------------------------------------

LIVENESS_MS = 60_000


def per_vehicle(run: Run) -> dict[str, list[Write]]:
    by_vehicle: dict[str, list[Write]] = {}
    for write in run.writes:
        by_vehicle.setdefault(write.pseudo_vin, []).append(write)
    return by_vehicle


def test_a_parked_vehicle_is_written_once_a_liveness_interval_and_a_driving_one_every_two_records() -> None:
    run = simulate(budget_ms=1800, vehicles=10, seconds=900, liveness_ms=LIVENESS_MS, parked=5)
    assert sum(len(w.arrivals) for w in run.writes) == run.records
    parked = {f"{v:032x}" for v in range(5)}
    writes = per_vehicle(run)
    for pseudo_vin, mine in writes.items():
        records = sum(len(w.arrivals) for w in mine)
        if pseudo_vin in parked:
            # The first sighting within B; then ts alone, at most once a liveness interval (the
            # checkpoint flush every 60 s falls in between): 1 write per 60 records at 1 Hz.
            assert len(mine) / records <= 0.02
            assert mine[0].lands_ms <= min(mine[0].arrivals) + 1800
            gaps = [b.taken_ms - a.taken_ms for a, b in itertools.pairwise(mine)]
            assert max(gaps) <= LIVENESS_MS + POLL_MS, "ts older than the liveness interval"
            assert min(gaps[1:]) >= LIVENESS_MS - POLL_MS, "two liveness writes within one interval"
        else:
            assert len(mine) / records >= 0.5
            assert all(w.lands_ms <= min(w.arrivals) + 1800 for w in mine), "a change landed after B"
    assert set(run.pending_at_checkpoints) == {0}, "liveness left pending past a checkpoint"


def test_without_liveness_a_parked_vehicle_costs_what_a_driving_one_does() -> None:
    run = simulate(budget_ms=1800, vehicles=2, seconds=300, liveness_ms=0, parked=1)
    parked, driving = (per_vehicle(run)[f"{v:032x}"] for v in range(2))
    assert abs(len(parked) - len(driving)) <= 1 and len(parked) >= 300 / 2


def test_a_change_after_liveness_records_is_written_within_b_with_their_ts() -> None:
    buffer = VehicleStateBuffer(1800, lead_ms=350, liveness_ms=LIVENESS_MS)
    buffer.add(*record("v", 0, 1_000, speed=0.0), now_ms=1_030)
    assert len(buffer.due(2_500, everything=False)) == 1
    for second in range(2, 10):  # parked: nothing due within B, nor at once
        buffer.add(*record("v", second, second * 1000, speed=0.0), now_ms=second * 1000 + 30)
        assert buffer.due(second * 1000 + 280, everything=False) == []
    buffer.add(*record("v", 10, 10_000, speed=12.0), now_ms=10_030)  # it moves
    assert buffer.due(11_000, everything=False) == []
    (moved,) = buffer.due(11_500, everything=False)  # its arrival + B - lead
    assert moved.update.signals["vehicleSpeed"].value == 12.0
    assert moved.update.timestamp_ms == 10_000 - 200 and len(moved.readings) == 9


def test_liveness_is_due_one_interval_after_its_first_records_receipt_and_at_every_checkpoint() -> None:
    buffer = VehicleStateBuffer(1800, lead_ms=350, liveness_ms=LIVENESS_MS)
    buffer.add(*record("v", 0, 0, speed=0.0), now_ms=30)
    assert len(buffer.due(1_500, everything=False)) == 1
    buffer.add(*record("v", 1, 30_000, speed=0.0), now_ms=30_030)
    buffer.add(*record("v", 2, 31_000, speed=0.0), now_ms=31_030)
    assert buffer.due(90_000, everything=False) == []
    (liveness,) = buffer.due(90_030, everything=False)  # 60 s after the first waiting record's receipt
    assert liveness.update.timestamp_ms == 31_000 - 200 and len(liveness.readings) == 2
    buffer.add(*record("v", 3, 92_000, speed=0.0), now_ms=92_030)
    (flushed,) = buffer.due(93_000, everything=True)  # a checkpoint: liveness is written, not skipped
    assert flushed.update.timestamp_ms == 92_000 - 200 and len(buffer) == 0


def test_a_late_record_changes_nothing_newer_values_already_hold() -> None:
    # Latest by event time: the written speed 0 at 5 s beats a late 12 at 3 s, so the late record is no
    # change (not due within B), and the update it makes is dropped at the checkpoint: the store has it.
    buffer = VehicleStateBuffer(1800, lead_ms=350, liveness_ms=LIVENESS_MS)
    buffer.add(*record("v", 0, 5_200, speed=0.0), now_ms=5_230)
    assert len(buffer.due(7_000, everything=True)) == 1
    late, kinesis = record("v", 1, 3_200, speed=12.0)
    buffer.add(late, kinesis, now_ms=8_000)
    assert buffer.due(20_000, everything=False) == []
    assert buffer.due(20_000, everything=True) == [] and len(buffer) == 0
    # The same late record once the buffer has lost what it wrote (a restart): a change, within B.
    restarted = VehicleStateBuffer(1800, lead_ms=350, liveness_ms=LIVENESS_MS)
    restarted.add(late, kinesis, now_ms=8_000)
    assert len(restarted.due(9_800 - 350, everything=False)) == 1


def test_a_record_newer_than_a_pending_liveness_update_with_another_value_is_a_change() -> None:
    buffer = VehicleStateBuffer(1800, lead_ms=350, liveness_ms=LIVENESS_MS)
    buffer.add(*record("v", 0, 1_000, speed=0.0), now_ms=1_030)
    buffer.due(3_000, everything=False)
    buffer.add(*record("v", 1, 4_000, speed=0.0), now_ms=4_030)  # liveness
    buffer.add(*record("v", 2, 2_500, speed=12.0), now_ms=4_040)  # late, older than the pending 0: no change
    assert buffer.due(30_000, everything=False) == []
    buffer.add(*record("v", 3, 31_000, speed=12.0), now_ms=31_030)  # newer, another value: a change
    (due,) = buffer.due(32_800 - 350, everything=False)
    assert due.update.signals["vehicleSpeed"].value == 12.0


# --- trail bucket spans: slow reporters -------------------------------------------------------------------


def reporting(pseudo_vin: str, every_ms: int, count: int, start_ms: int = 1_800_000_000_000) -> list[int]:
    return [start_ms + i * every_ms for i in range(count)]


def backlog_merges(trail: TrailBuffer, pseudo_vin: str, times: list[int]) -> list[BucketMerge]:
    """A backlog: every record received at once, what is due written as a catch-up writes it."""
    merges: list[BucketMerge] = []
    for i, t in enumerate(times):
        trail.add(*located(pseudo_vin, t, 39.7 + i / 1e4), now_ms=0)
        merges += trail.due(now_ms=0, everything=False)
    return merges + trail.due(now_ms=0, everything=True)


@pytest.mark.parametrize(("every_s", "span_s"), [(1, 15), (2, 30), (5, 75), (10, 150), (30, 450), (120, 450)])
def test_a_vehicle_s_buckets_span_about_16_of_its_records(every_s: int, span_s: int) -> None:
    trail = TrailBuffer(bucket_seconds=15, max_delay_ms=15_000)
    times = reporting("v", every_s * 1000 - 7, 4 * span_s // every_s + 4)  # a clock a little fast
    merges = backlog_merges(trail, "v", times)
    assert trail.span_of("v") == span_s
    wide = [m for m in merges if m.bucket % span_s == 0 and m.bucket >= times[3] // 1000]
    assert all(len(m.slots) <= 16 for m in merges)
    # After the first GAPS in-order gaps, one write per full bucket, not one per 15 s of event time.
    assert len(merges) <= 4 + len(times) * every_s // span_s + 1 and wide
    assert sum(len(m.slots) for m in merges) == len(times)


def test_a_1_hz_vehicle_back_from_a_silence_keeps_15_s_buckets() -> None:
    trail = TrailBuffer(bucket_seconds=15, max_delay_ms=15_000)
    times = reporting("v", 1000, 10) + reporting("v", 1000, 40, start_ms=1_800_000_000_000 + 3_600_000)
    merges = backlog_merges(trail, "v", times)
    assert trail.span_of("v") == 15 and all(m.bucket % 15 == 0 and len(m.slots) <= 15 for m in merges)


def test_a_slow_reporter_starts_at_15_s_and_late_records_neither_move_nor_fill_its_wide_buckets() -> None:
    trail = TrailBuffer(bucket_seconds=15, max_delay_ms=15_000)
    start = 1_800_000_000_000
    trail.add(*located("v", start, 39.7), now_ms=0)
    trail.add(*located("v", start + 30_000, 39.7), now_ms=0)
    assert trail.span_of("v") == 15  # one gap: not enough to widen
    for i in range(2, 4):
        trail.add(*located("v", start + i * 30_000, 39.7), now_ms=0)
    assert trail.span_of("v") == 450
    burst = [start + 30_000 + i * 1000 for i in range(1, 30)]  # a resent 1 Hz buffer, late: not gaps
    for t in burst:
        trail.add(*located("v", t, 39.7), now_ms=0)
    assert trail.span_of("v") == 450
    resent = {m.bucket: sorted(m.slots, key=int) for m in trail.of_vehicles({"v"})}
    # The wide bucket (its key is also the first 15 s bucket's) holds the record at 0 s and the in-order
    # one at 90 s; the burst lies in 15 s buckets of its own.
    assert resent.pop(start // 1000) == ["0", "9000"]
    assert sorted(resent) == [start // 1000 + s for s in (30, 45, 60)]
    assert sum(map(len, resent.values())) == len(burst) + 2  # and the records at 30 s and 60 s
    trail.add(*located("v", start + 91_000, 39.7), now_ms=0)  # it speeds up: narrower at once
    assert trail.span_of("v") == 15


def test_fixed_buckets_when_not_adaptive() -> None:
    trail = TrailBuffer(bucket_seconds=15, max_delay_ms=15_000, adaptive=False)
    merges = backlog_merges(trail, "v", reporting("v", 30_000, 20))
    assert trail.span_of("v") == 15 and len(merges) == 20
