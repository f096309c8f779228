"""The *trips* scenario: what a reader of ``trip-state``, ``trips-index`` and the S3 archive sees of a trip,
live, through the real KCL MultiLangDaemon at the shipped defaults (issue 21's live view and exact machine).

Method. A fresh 1-shard stream; ``python -m worker run`` with ``Settings``' defaults (only the lease timings
of ``bench.stage.BENCH_ENV`` shortened, as in ``bench.e2e``). 20 vehicles report at 1 Hz (native records, put
as they happen, PutRecords about 5 times a second):

- parked (speed 0) for ``LEAD_SECONDS``, so first sightings (vault, trip-state load) are not in the figures;
- then, staggered ``STAGGER_SECONDS`` apart, each drives (every record above 5 mph) for 120 s down to 63 s
  (longest first, so the stops are spread over ~30 s and the run stays short; one drives 90 s: every trip
  is shorter than the gap, the kind the settle window of 300 s used to keep off ``trip-state``);
- then the stop (speed 0) and 1 Hz parked records for gap + L + 30 s, or until every trip's index item and
  S3 object exist (nothing after that is measured).

A sampler reads every vehicle's ``trip-state`` item (one strongly consistent BatchGetItem) every 0.25 s, and
the ``trips-index`` items (BatchGetItem, keys of the trips' ids) not found yet; once an index item is found,
a HeadObject of its ``s3Key`` (again each read until it exists). The figures (resolution: 0.25 s):

- **start**: from the PutRecords of a vehicle's first moving record to the end of the first read showing
  ``status`` ACTIVE with the trip's id (``trip_{start}_{pseudoVin}``) and ``startTime`` = that record's time;
- **stop**: from the PutRecords of the stop record to the first read showing ENDING with that id and
  ``gapStartTime`` = the stop's time;
- **progress**: every read that began after the first moving record was put and before the stop was put and
  shows the trip ACTIVE: the newest record of the trip put before the read began, less ``lastEventTime``
  (seconds of event time), and the trip's records put by then less ``breadcrumbCount`` (every record here
  is located, so each is a crumb);
- **shown**: the 90 s trip was shown ACTIVE in a read that began before its stop was put;
- **ids**: the ids shown live, against the ``trips-index`` items of the vehicle at the end (Query);
- **archive** (on time): from the PutRecords of the last moving record to the end of the first read at which
  an index item (the on-time one, ``provisional``, or already the final one) and its S3 object both exist;
- **final archive**: the same, for the final index item (no ``provisional``) and its object under ``trips/``;
- **cost**: the local AWS's counts from the first record put to the end of sampling, per record put (the
  sampler's own requests taken out): write units by table, requests by service.

With 20 trips a p99 is the largest value (nearest rank). Never seen counts as infinitely late ("not seen").
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import e2e, measure
from bench.e2e import Put, percentile
from bench.stage import BENCH_ENV, Stage, fresh_stage
from bench.workload import SEED, Produced
from devtools.local_aws import LocalAws
from devtools.simulate import CITY, MILES_PER_DEGREE, make_vin
from processors.pseudonymize import Pseudonymizer
from processors.signals import format_time, parse_time
from processors.trips import trip_id

VEHICLES = 20
LEAD_SECONDS = 8
"""Parked records before the first vehicle moves: a vehicle's first sighting (vault write, trip-state load)
costs a processor a few requests, which would otherwise be measured as the start's latency."""
STAGGER_SECONDS = 1.5
DRIVE_LONGEST_SECONDS, DRIVE_SHORTEST_SECONDS = 120, 60
SHORT_TRIP_SECONDS = 90
"""The trip shorter than the gap the ``shown`` figure is read on (every trip here is shorter)."""
PARKED_AFTER_GAP_SECONDS = 30
"""Parked records go on this long past stop + gap + L, so a late archive is still waited for."""
GRACE_SECONDS = 20.0
"""After the last record: reads go on this long while an archive is missing (empty polls move the stream
clock, so a trip completed by a record already put still settles)."""
SAMPLE_EVERY = 0.25
ACTIVE, ENDING, IDLE, ABSENT = "ACTIVE", "ENDING", "IDLE", "absent"


# -- the workload ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drive:
    """One vehicle's trip, as put: parked from ``from_ms``, moving from ``first_moving_ms`` (every record
    above 5 mph), stopped at ``stop_ms`` (speed 0), parked after it until ``parked_until_ms``."""

    vin: str
    pseudo_vin: str
    from_ms: int
    first_moving_ms: int
    stop_ms: int
    parked_until_ms: int
    cruise_mph: float

    @property
    def trip_id(self) -> str:
        """The id the trip rules give it (``processors.trips.trip_id``; the vehicle's first trip)."""
        return trip_id(self.pseudo_vin, self.first_moving_ms)

    @property
    def last_moving_ms(self) -> int:
        return self.stop_ms - 1000

    @property
    def drive_seconds(self) -> float:
        return (self.stop_ms - self.first_moving_ms) / 1000


def plan(
    vehicles: int, start_ms: int, gap_s: int, lateness_s: int, pseudo: Pseudonymizer, seed: int = SEED
) -> list[Drive]:
    """The scenario's drives (module docstring): vehicle ``i`` starts ``LEAD + i * STAGGER`` s in and drives
    120 - 60 i / n s (20 vehicles: 120, 117, ..., 90, ..., 63), at a sub-second offset of its own."""
    rng = random.Random(seed)
    drives = []
    for i in range(vehicles):
        vin = make_vin(rng)
        offset = rng.randrange(1000)
        begin = start_ms + offset
        first = begin + (LEAD_SECONDS + int(i * STAGGER_SECONDS)) * 1000
        seconds = round(
            DRIVE_LONGEST_SECONDS - (DRIVE_LONGEST_SECONDS - DRIVE_SHORTEST_SECONDS) * i / vehicles
        )
        stop = first + seconds * 1000
        drives.append(
            Drive(
                vin=vin,
                pseudo_vin=pseudo.pseudo_vin(vin),
                from_ms=begin,
                first_moving_ms=first,
                stop_ms=stop,
                parked_until_ms=stop + (gap_s + lateness_s + PARKED_AFTER_GAP_SECONDS) * 1000,
                cruise_mph=rng.uniform(25, 45),
            )
        )
    return drives


def speed_at(drive: Drive, t_ms: int) -> float:
    """Above 5 mph from the first moving record to the last one (up to cruise and back down to 6), else 0."""
    if not drive.first_moving_ms <= t_ms < drive.stop_ms:
        return 0.0
    since = (t_ms - drive.first_moving_ms) // 1000
    left = (drive.stop_ms - t_ms) // 1000 - 1
    return round(max(6.0, min(drive.cruise_mph, 8.0 + 4 * since, 6.0 + 4 * left)), 1)


def records(drives: Sequence[Drive], seed: int = SEED) -> list[Produced]:
    """Every vehicle's 1 Hz native records, in the order they are due (put as they happen)."""
    rng = random.Random(seed + 1)
    out = []
    for drive in drives:
        lat, lng = CITY[0] + rng.uniform(-0.1, 0.1), CITY[1] + rng.uniform(-0.1, 0.1)
        heading, odometer, battery = rng.uniform(0, 360), rng.uniform(1_000, 60_000), rng.uniform(40, 95)
        for t in range(drive.from_ms, drive.parked_until_ms + 1, 1000):
            speed = speed_at(drive, t)
            miles = speed / 3600
            if miles:
                heading = (heading + rng.gauss(0, 4)) % 360
                lat += miles * math.cos(math.radians(heading)) / MILES_PER_DEGREE
                lng += (
                    miles * math.sin(math.radians(heading)) / (MILES_PER_DEGREE * math.cos(math.radians(lat)))
                )
                odometer += miles
                battery -= miles * 0.3
            record = {
                "vin": drive.vin,
                "timestamp": format_time(t),
                "signals": {
                    "vehicleSpeed": speed,
                    "lat": round(lat, 6),
                    "lng": round(lng, 6),
                    "heading": round(heading),
                    "odometer": round(odometer, 2),
                    "batteryLevel": round(battery),
                    "batteryRange": round(battery * 3.1, 1),
                    "shiftState": "D" if drive.first_moving_ms <= t < drive.stop_ms else "P",
                },
            }
            out.append(Produced(drive.vin, t, t, orjson.dumps(record)))
    return sorted(out, key=lambda r: (r.due_ms, r.vin))


# -- what a reader sees ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shown:
    """One vehicle's ``trip-state`` top-level (live) fields in one read; times as epoch ms."""

    status: str
    trip_id: str | None = None
    start_ms: int | None = None
    last_ms: int | None = None
    count: int = 0
    gap_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Read:
    """One sampler read: when it began and returned (``time.monotonic``), and what it showed per vehicle
    (a vehicle without an item is not in ``shown``)."""

    started: float
    returned: float
    shown: dict[str, Shown]


def shown_of(item: dict[str, Any]) -> Shown:
    """A ``trip-state`` item as BatchGetItem returns it (DynamoDB JSON)."""

    def ms(name: str) -> int | None:
        return parse_time(item[name]["S"]) if name in item and "S" in item[name] else None

    return Shown(
        status=item["status"]["S"],
        trip_id=item["tripId"]["S"] if "tripId" in item and "S" in item["tripId"] else None,
        start_ms=ms("startTime"),
        last_ms=ms("lastEventTime"),
        count=int(item["breadcrumbCount"]["N"]) if "breadcrumbCount" in item else 0,
        gap_ms=ms("gapStartTime"),
    )


def first_showing(reads: Sequence[Read], pseudo_vin: str, test: Callable[[Shown], bool]) -> float | None:
    """When the first read showing ``test`` of the vehicle's item returned (None: never)."""
    for read in reads:
        shown = read.shown.get(pseudo_vin)
        if shown is not None and test(shown):
            return read.returned
    return None


def started(drive: Drive) -> Callable[[Shown], bool]:
    return lambda s: s.status == ACTIVE and s.trip_id == drive.trip_id and s.start_ms == drive.first_moving_ms


def stopped(drive: Drive) -> Callable[[Shown], bool]:
    return lambda s: s.status == ENDING and s.trip_id == drive.trip_id and s.gap_ms == drive.stop_ms


@dataclass(frozen=True, slots=True)
class Behind:
    """How far one read's ``lastEventTime`` and ``breadcrumbCount`` trail what was put before it began."""

    seconds: float
    """The newest record of the trip put, less ``lastEventTime``, in seconds of event time."""
    records: int
    """The trip's records put, less ``breadcrumbCount``."""


def progress_behind(drive: Drive, puts: Sequence[Put], reads: Sequence[Read]) -> list[Behind]:
    """Per read while driving (module docstring), how far the live progress trails the records put.
    ``puts``: the vehicle's, in the order they were sent."""
    trip = [p for p in puts if drive.first_moving_ms <= p.event_ms < drive.stop_ms]
    stop_put = next((p.sent_at for p in puts if p.event_ms == drive.stop_ms), math.inf)
    if not trip:
        return []
    sent = [p.sent_at for p in trip]
    newest = list(itertools.accumulate((p.event_ms for p in trip), max))
    out = []
    for read in reads:
        if not sent[0] <= read.started < stop_put:
            continue
        shown = read.shown.get(drive.pseudo_vin)
        if shown is None or shown.status != ACTIVE or shown.trip_id != drive.trip_id or shown.last_ms is None:
            continue
        put = bisect.bisect_right(sent, read.started)
        out.append(Behind((newest[put - 1] - shown.last_ms) / 1000, put - shown.count))
    return out


def timeline(reads: Sequence[Read], pseudo_vin: str, origin: float) -> list[tuple[float, str, str | None]]:
    """The vehicle's ``status`` (or ``absent``) and ``tripId`` each time they changed, at seconds from
    ``origin`` (its stop's PutRecords)."""
    out: list[tuple[float, str, str | None]] = []
    for read in reads:
        shown = read.shown.get(pseudo_vin)
        now = (shown.status, shown.trip_id) if shown is not None else (ABSENT, None)
        if not out or out[-1][1:] != now:
            out.append((round(read.returned - origin, 2), *now))
    return out


def regressions(reads: Sequence[Read], pseudo_vin: str) -> list[str]:
    """What a reader would call wrong about the vehicle's item between two consecutive reads of one trip:
    ``lastEventTime`` or ``breadcrumbCount`` going back, a trip's start moving, or ACTIVE after ENDING."""
    out: list[str] = []
    before: Shown | None = None
    for read in reads:
        shown = read.shown.get(pseudo_vin)
        same_trip = shown is not None and before is not None and shown.trip_id == before.trip_id
        if same_trip and shown is not None and before is not None and shown.trip_id is not None:
            if (shown.last_ms or 0) < (before.last_ms or 0):
                out.append(f"lastEventTime back from {before.last_ms} to {shown.last_ms}")
            if shown.count < before.count:
                out.append(f"breadcrumbCount back from {before.count} to {shown.count}")
            if shown.start_ms != before.start_ms:
                out.append(f"startTime moved from {before.start_ms} to {shown.start_ms}")
            if before.status == ENDING and shown.status == ACTIVE:
                out.append("ACTIVE again after ENDING")
        before = shown
    return out


# -- the sampler ----------------------------------------------------------------------------------------


class TripSampler(threading.Thread):
    """Reads every vehicle's ``trip-state`` item, and the index items and S3 objects not found yet, every
    ``SAMPLE_EVERY`` s until stopped (module docstring)."""

    def __init__(self, stage: Stage, drives: Sequence[Drive]) -> None:
        super().__init__(name="bench-trip-sampler", daemon=True)
        self._stage = stage
        self._drives = {d.pseudo_vin: d for d in drives}
        self.reads: list[Read] = []
        self.indexed: dict[str, float] = {}
        """pseudoVin -> when the read that first found its trip's index item returned."""
        self.s3_keys: dict[str, str] = {}
        """pseudoVin -> ``s3Key`` of the newest index item read."""
        self.archived: dict[str, float] = {}
        """pseudoVin -> when an index item (on time or final) and its S3 object were first both found."""
        self.final: dict[str, float] = {}
        """pseudoVin -> when the final index item (no ``provisional``) and its object were both found."""
        self._final_keys: set[str] = set()
        self.requests: Counter[str] = Counter()
        self.stop = threading.Event()

    def all_archived(self) -> bool:
        return len(self.final) == len(self._drives)

    def run(self) -> None:
        settings = self._stage.settings
        state_table, index_table = settings.table_names["trip-state"], settings.table_names["trips-index"]
        dynamodb, s3 = self._stage.clients.dynamodb, self._stage.clients.s3
        keys: list[Any] = [{"pseudoVin": {"S": pv}} for pv in self._drives]
        while not self.stop.is_set():
            began = time.monotonic()
            items = dynamodb.batch_get_item(
                RequestItems={
                    state_table: {
                        "Keys": keys,
                        "ConsistentRead": True,
                        "ProjectionExpression": "pseudoVin, #s, tripId, startTime, lastEventTime,"
                        " breadcrumbCount, gapStartTime",
                        "ExpressionAttributeNames": {"#s": "status"},
                    }
                }
            )["Responses"][state_table]
            self.requests["dynamodb:BatchGetItem"] += 1
            shown = {i["pseudoVin"]["S"]: shown_of(i) for i in items}
            missing = [
                {"pseudoVin": {"S": pv}, "tripId": {"S": d.trip_id}}
                for pv, d in self._drives.items()
                if pv not in self._final_keys
            ]
            found: list[dict[str, Any]] = []
            if missing:
                found = dynamodb.batch_get_item(
                    RequestItems={
                        index_table: {
                            "Keys": missing,
                            "ConsistentRead": True,
                            "ProjectionExpression": "pseudoVin, s3Key, provisional",
                        }
                    }
                )["Responses"][index_table]
                self.requests["dynamodb:BatchGetItem"] += 1
            returned = time.monotonic()
            self.reads.append(Read(began, returned, shown))
            for item in found:
                pv = item["pseudoVin"]["S"]
                self.indexed.setdefault(pv, returned)
                self.s3_keys[pv] = item["s3Key"]["S"]
                if not item.get("provisional", {}).get("BOOL", False):
                    self._final_keys.add(pv)
            for pv in [pv for pv in self.indexed if pv not in self.final]:
                # The archive is written before its index item, so it is found with it unless that order
                # breaks; both exist by the time the HeadObject returns (a few ms after the read).
                if pv in self.archived and pv not in self._final_keys:
                    continue
                self.requests["s3:HeadObject"] += 1
                try:
                    s3.head_object(Bucket=settings.archive_bucket, Key=self.s3_keys[pv])
                except s3.exceptions.ClientError:
                    continue
                found_at = time.monotonic()
                self.archived.setdefault(pv, found_at)
                if pv in self._final_keys:
                    self.final[pv] = found_at
            self.stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - began)))


# -- the run --------------------------------------------------------------------------------------------


@dataclass
class TripFigures:
    """One vehicle's trip as a reader saw it (seconds; None: never seen)."""

    pseudo_vin: str
    drive_seconds: float
    start_s: float | None
    stop_s: float | None
    archive_s: float | None
    """From the last moving record's PutRecords to an index item and its S3 object both found (on time)."""
    final_s: float | None
    """The same, for the final index item and its object."""
    shown_while_driving: bool
    live_trip_ids: list[str]
    archived_trip_ids: list[str]
    behind_seconds_max: float | None
    behind_records_max: int | None
    ended_s: float | None
    """From the stop's PutRecords to the first read showing the trip over (IDLE or no item)."""
    gone_s: float | None
    """From the stop's PutRecords to the first read finding no item."""
    live_count_last: int | None
    """``breadcrumbCount`` of the last read showing the trip."""
    archived_count: int | None
    """The index item's ``breadcrumbCount``."""
    timeline: list[tuple[float, str, str | None]] = field(default_factory=list)
    oddities: list[str] = field(default_factory=list)


@dataclass
class TripsResult:
    vehicles: int
    records: int
    seconds: float
    """Wall time from the first record put to the end of sampling."""
    startup_s: float
    settings: dict[str, Any]
    start_p50_s: float | None
    start_p99_s: float | None
    stop_p50_s: float | None
    stop_p99_s: float | None
    behind_seconds_p99: float | None
    behind_seconds_max: float | None
    behind_records_p99: float | None
    behind_records_max: float | None
    progress_reads: int
    short_trip_seconds: float
    short_trip_shown: bool
    trips_shown_while_driving: int
    ids_equal: int
    archive_p50_s: float | None
    archive_p99_s: float | None
    archive_expected_s: float
    """What the design expects of the on-time archive: gap + the record interval + ~0.5 s (a poll and the
    writes)."""
    archive_target_s: float
    final_p50_s: float | None
    final_p99_s: float | None
    final_expected_s: float
    """The final archive: L after the on-time one."""
    written: dict[str, dict[str, int]]
    requests: dict[str, int]
    per_record: dict[str, Any]
    trips: list[TripFigures]

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def _figures(
    drive: Drive, puts: Sequence[Put], reads: Sequence[Read], archived: dict[str, Any]
) -> TripFigures:
    """``puts``: the vehicle's; ``archived``: what the index holds for it at the end."""
    put_at = {p.event_ms: p.sent_at for p in puts}
    first_put, stop_put = put_at.get(drive.first_moving_ms), put_at.get(drive.stop_ms)
    last_moving_put = put_at.get(drive.last_moving_ms)
    start = first_showing(reads, drive.pseudo_vin, started(drive))
    stop = first_showing(reads, drive.pseudo_vin, stopped(drive))
    behind = progress_behind(drive, puts, reads)
    live_ids = sorted(
        {
            s.trip_id
            for r in reads
            if (s := r.shown.get(drive.pseudo_vin)) is not None and s.trip_id is not None
        }
    )
    shown_while_driving = stop_put is not None and any(
        r.started < stop_put and (s := r.shown.get(drive.pseudo_vin)) is not None and started(drive)(s)
        for r in reads
    )
    after_stop = [r for r in reads if stop_put is not None and r.started >= stop_put]
    ended = next(
        (r.returned for r in after_stop if (s := r.shown.get(drive.pseudo_vin)) is None or s.status == IDLE),
        None,
    )
    gone = next((r.returned for r in after_stop if drive.pseudo_vin not in r.shown), None)
    counts = [s.count for r in reads if (s := r.shown.get(drive.pseudo_vin)) is not None and s.trip_id]
    oddities = regressions(reads, drive.pseudo_vin)
    if gone is not None and any(r.returned > gone and drive.pseudo_vin in r.shown for r in reads):
        oddities.append("the item came back after it was deleted")

    def since(at: float | None, origin: float | None) -> float | None:
        return None if at is None or origin is None else round(at - origin, 3)

    return TripFigures(
        pseudo_vin=drive.pseudo_vin,
        drive_seconds=drive.drive_seconds,
        start_s=since(start, first_put),
        stop_s=since(stop, stop_put),
        archive_s=since(archived.get("found_at"), last_moving_put),
        final_s=since(archived.get("final_at"), last_moving_put),
        shown_while_driving=shown_while_driving,
        live_trip_ids=live_ids,
        archived_trip_ids=archived.get("trip_ids", []),
        behind_seconds_max=max((b.seconds for b in behind), default=None),
        behind_records_max=max((b.records for b in behind), default=None),
        ended_s=since(ended, stop_put),
        gone_s=since(gone, stop_put),
        live_count_last=counts[-1] if counts else None,
        archived_count=archived.get("breadcrumb_count"),
        timeline=timeline(reads, drive.pseudo_vin, stop_put or 0.0),
        oddities=oddities,
    )


def _lag(value: float | None) -> float:
    return math.inf if value is None else value


def run(
    aws: LocalAws,
    say: Callable[[str], None],
    vehicles: int = VEHICLES,
    overrides: dict[str, str] | None = None,
) -> TripsResult:
    """``overrides``: settings (environment names) instead of the shipped defaults (for trying the method
    out quickly, e.g. a shorter gap; ``make bench`` runs none)."""
    stage = fresh_stage(aws, shards=1, FLEET_KCL_EXECUTABLE="", PYTHONPATH=str(e2e.REPO), **(overrides or {}))
    settings = stage.settings
    gap_s, lateness_s = settings.trip_gap_seconds, settings.trip_lateness_seconds
    pseudo = Pseudonymizer(BENCH_ENV["FLEET_PSEUDONYM_KEY"].encode())
    planned = (
        LEAD_SECONDS
        + vehicles * STAGGER_SECONDS
        + DRIVE_LONGEST_SECONDS
        + gap_s
        + lateness_s
        + PARKED_AFTER_GAP_SECONDS
    )
    with e2e.daemon(stage, "trips", planned + GRACE_SECONDS + 300) as running:
        drives = plan(vehicles, int(time.time() * 1000) + 2000, gap_s, lateness_s, pseudo)
        produced = records(drives)
        say(
            f"  trips: processor up after {running.startup_s:.0f}s; {vehicles} vehicles drive"
            f" {min(d.drive_seconds for d in drives):.0f}-{max(d.drive_seconds for d in drives):.0f} s, then"
            f" park; up to {(produced[-1].due_ms - produced[0].due_ms) / 1000:.0f} s of records"
        )
        sampler = TripSampler(stage, drives)
        sampler.start()
        while int(time.time() * 1000) < produced[0].due_ms:
            time.sleep(0.01)
        aws.app.reset_counts()
        began = time.monotonic()
        puts = e2e.replay_live(stage, produced, pseudo, until=sampler.all_archived)
        deadline = time.monotonic() + GRACE_SECONDS
        while not sampler.all_archived() and time.monotonic() < deadline:
            time.sleep(SAMPLE_EVERY)
        sampler.stop.set()
        sampler.join()
        seconds = time.monotonic() - began
        written = measure.written_by_table(stage)
        requests = measure.requests_by_operation(stage, minus=sampler.requests)
        archived = _archived(stage, drives)
    for pv, at in sampler.archived.items():
        archived.setdefault(pv, {})["found_at"] = at
    for pv, at in sampler.final.items():
        archived.setdefault(pv, {})["final_at"] = at
    by_vehicle: dict[str, list[Put]] = {d.pseudo_vin: [] for d in drives}
    for put in puts:
        by_vehicle[put.pseudo_vin].append(put)
    reads = sampler.reads
    trips = [_figures(d, by_vehicle[d.pseudo_vin], reads, archived.get(d.pseudo_vin, {})) for d in drives]
    behind = [b for d in drives for b in progress_behind(d, by_vehicle[d.pseudo_vin], reads)]
    short = min(trips, key=lambda t: abs(t.drive_seconds - SHORT_TRIP_SECONDS))
    n = len(puts)
    return TripsResult(
        vehicles=vehicles,
        records=n,
        seconds=round(seconds, 1),
        startup_s=running.startup_s,
        settings=e2e.settings_of(stage),
        start_p50_s=percentile([_lag(t.start_s) for t in trips], 0.50),
        start_p99_s=percentile([_lag(t.start_s) for t in trips], 0.99),
        stop_p50_s=percentile([_lag(t.stop_s) for t in trips], 0.50),
        stop_p99_s=percentile([_lag(t.stop_s) for t in trips], 0.99),
        behind_seconds_p99=percentile([b.seconds for b in behind], 0.99),
        behind_seconds_max=percentile([b.seconds for b in behind], 1.0),
        behind_records_p99=percentile([float(b.records) for b in behind], 0.99),
        behind_records_max=percentile([float(b.records) for b in behind], 1.0),
        progress_reads=len(behind),
        short_trip_seconds=short.drive_seconds,
        short_trip_shown=short.shown_while_driving,
        trips_shown_while_driving=sum(t.shown_while_driving for t in trips),
        ids_equal=sum(
            len(t.archived_trip_ids) == 1 and t.live_trip_ids == t.archived_trip_ids for t in trips
        ),
        archive_p50_s=percentile([_lag(t.archive_s) for t in trips], 0.50),
        archive_p99_s=percentile([_lag(t.archive_s) for t in trips], 0.99),
        archive_expected_s=gap_s + 1.5,
        archive_target_s=gap_s + 30.0,
        final_p50_s=percentile([_lag(t.final_s) for t in trips], 0.50),
        final_p99_s=percentile([_lag(t.final_s) for t in trips], 0.99),
        final_expected_s=gap_s + lateness_s + 1.5,
        written=written,
        requests=requests,
        per_record=measure.per_record(written, requests, n),
        trips=trips,
    )


def _archived(stage: Stage, drives: Sequence[Drive]) -> dict[str, dict[str, Any]]:
    """Per vehicle, the ``trips-index`` items it has at the end: their ids and the first one's count."""
    table = stage.settings.table_names["trips-index"]
    out: dict[str, dict[str, Any]] = {}
    for drive in drives:
        items = stage.clients.dynamodb.query(
            TableName=table,
            KeyConditionExpression="pseudoVin = :pv",
            ExpressionAttributeValues={":pv": {"S": drive.pseudo_vin}},
            ConsistentRead=True,
        )["Items"]
        out[drive.pseudo_vin] = {
            "trip_ids": sorted(i["tripId"]["S"] for i in items),
            "breadcrumb_count": int(items[0]["breadcrumbCount"]["N"]) if items else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench trips``: this scenario alone (``make bench`` runs it as its part 4)."""
    from bench import report

    parser = argparse.ArgumentParser(prog="python -m bench trips", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=VEHICLES)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FLEET_NAME=VALUE",
        help="run with this setting instead of the default (to try the method out; figures then say so)",
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    with LocalAws() as aws:
        result = run(aws, lambda text: print(text, file=sys.stderr), args.vehicles, overrides).summary()
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    print("\n".join(report.trips_lines(result, report.trip_targets(result))))
    return 0
