"""Our DynamoDB + S3 requests per record as a function of the batch window, counted from the plans.

No AWS: the same decode -> plan steps as the processor, and the requests the executor makes for each
plan (one UpdateItem per vehicle, one per trail bucket of the batch, the trip-state put and the archive
steps of ``TripCommitter``, the vault lookup and write and the trip-state load on a vehicle's first
sighting; not the key fingerprint check, one read per processor). The benchmark checks it against the
replay's measured count at the same window before trusting the sweep.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from bench.workload import Fleet, entries, kinesis_records, windows
from processors.batch import TripPlanner, decode_batch
from processors.decode import Decoder
from processors.pseudonymize import Pseudonymizer
from processors.trail import chunks, remainder_of
from processors.trips import TripStateMachine
from schemas.records import KinesisRecord
from worker.stores.dynamo_trips import BATCH_GET_LIMIT


def requests(batches: Sequence[Sequence[KinesisRecord]]) -> Counter[str]:
    decoder, pseudonymizer = Decoder(), Pseudonymizer(b"model")
    planner = TripPlanner(TripStateMachine())
    made: Counter[str] = Counter()
    for batch in batches:
        plan = decode_batch(batch, decoder, pseudonymizer)
        groups = plan.by_vehicle()
        unknown = planner.unknown(groups)
        # First sighting by this process: trip-state and vin-mapping read (a BatchGetItem per 100 each);
        # the vault written (UpdateItem) for a vehicle new to it, which every vehicle of a fresh replay is.
        made["dynamodb:UpdateItem"] += len(unknown)
        made["dynamodb:BatchGetItem"] += 2 * math.ceil(len(unknown) / BATCH_GET_LIMIT)
        for pseudo_vin in unknown:
            planner.adopt(pseudo_vin, None)
        made["dynamodb:UpdateItem"] += len(plan.vehicle_states)
        # One UpdateItem per trail bucket chunk (no contention in a single-writer replay).
        made["dynamodb:UpdateItem"] += sum(len(chunks(remainder_of(m))) for m in plan.trail)
        for pseudo_vin, readings in groups.items():
            trip = planner.plan(pseudo_vin, readings)
            made["dynamodb:Query"] += len(trip.seals) + len(trip.outbox)
            made["s3:PutObject"] += len(trip.seals) + len(trip.outbox)
            made["s3:GetObject"] += sum(t.segments for t in trip.outbox)
            made["dynamodb:PutItem"] += len(trip.outbox)  # index items
            made["dynamodb:PutItem"] += (1 if trip.new_completions else 0) + (
                1 if trip.outbox or trip.write else 0
            )
            if trip.write or trip.outbox:
                planner.committed(pseudo_vin, "v")
    return made


def per_record(fleet: Fleet, window_seconds: Sequence[float]) -> dict[float, float]:
    """DynamoDB + S3 requests per record for each batch window, on ``fleet``."""
    records = kinesis_records(entries(fleet.stream()))
    return {
        window: sum(requests(list(windows(records, fleet.vehicles, window))).values()) / len(records)
        for window in window_seconds
    }
