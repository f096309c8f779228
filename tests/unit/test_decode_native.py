from __future__ import annotations

from typing import Any

import orjson
import pytest

from processors.decode import DecodeLimits, Decoder
from processors.errors import InvalidRecord, RejectReason
from processors.signals import format_time, parse_event_time
from schemas.records import Location

VIN = "5YJ3E1EA7KF317000"
T0 = parse_event_time("2025-03-05T14:32:01.000Z")
ARRIVAL = T0 + 1_000
DECODER = Decoder(
    DecodeLimits(max_record_bytes=4096, max_future_skew_ms=24 * 3600_000, max_event_age_ms=7 * 24 * 3600_000)
)


def native(**overrides: Any) -> bytes:
    record: dict[str, Any] = {
        "vin": VIN,
        "timestamp": "2025-03-05T14:32:01.000Z",
        "signals": {
            "vehicleSpeed": 73.5,
            "lat": 39.7392,
            "lng": -104.9903,
            "heading": 90,
            "odometer": 22683.6,
            "batteryLevel": 75,
            "batteryRange": 255.3,
            "shiftState": "D",
        },
    }
    record.update(overrides)
    return orjson.dumps(record)


def rejected(data: bytes, arrival: int = ARRIVAL) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as caught:
        DECODER.decode(data, arrival)
    return caught.value


def test_native_record_decodes_to_canonical_signals() -> None:
    record = DECODER.decode(native(), ARRIVAL)
    assert record.vin == VIN
    assert record.event_time_ms == T0
    assert record.format == "native"
    assert record.signals == {
        "vehicleSpeed": 73.5,
        "location": Location(39.7392, -104.9903),
        "heading": 90,
        "odometer": 22683.6,
        "batteryLevel": 75,
        "batteryRange": 255.3,
        "shiftState": "D",
    }


def test_epoch_millis_naive_iso_and_offsets_are_the_same_instant() -> None:
    for stamp in (T0, "2025-03-05T14:32:01", "2025-03-05T15:32:01+01:00", "2025-03-05T14:32:01.000000Z"):
        assert DECODER.decode(native(timestamp=stamp), ARRIVAL).event_time_ms == T0


def test_vin_is_normalized_before_validation() -> None:
    assert DECODER.decode(native(vin="  5yj3e1ea7kf317000 \n"), ARRIVAL).vin == VIN


def test_deltas_carry_only_what_changed_and_unknown_signals_are_kept() -> None:
    record = DECODER.decode(
        native(signals={"batteryLevel": 74, "cabinTemp": 21.5, "tpms": {"fl": 2.9}}), ARRIVAL
    )
    assert record.signals == {"batteryLevel": 74, "cabinTemp": 21.5, "tpms": {"fl": 2.9}}


@pytest.mark.parametrize(("lat", "lng"), [(91.0, 10.0), (10.0, -180.5), (None, 10.0), (10.0, None), (0.0, 0)])
def test_invalid_coordinates_drop_the_location_and_keep_the_record(lat: Any, lng: Any) -> None:
    signals = {"vehicleSpeed": 12.0, "lat": lat, "lng": lng}
    record = DECODER.decode(native(signals={k: v for k, v in signals.items() if v is not None}), ARRIVAL)
    assert record.dropped_location
    assert record.signals == {"vehicleSpeed": 12.0}


def test_a_vin_smuggled_into_a_signal_is_dropped() -> None:
    record = DECODER.decode(
        native(signals={"vehicleSpeed": 1.0, "vehicleId": " 5yj3e1ea7kf317000", "note": {"owner": VIN}}),
        ARRIVAL,
    )
    assert record.signals == {"vehicleSpeed": 1.0}


def test_another_vehicles_vin_inside_a_name_or_a_longer_text_is_dropped() -> None:
    trailer = "1HGCM82633A004352"
    signals = {
        "vehicleSpeed": 1.0,
        "trailer": f"paired {trailer.lower()}!",
        f"car_{trailer}": 1,
        "hitch": f"X{trailer}",
        "firmware": "2024.44.25.3 7c1bd0b1",  # kept: letters and digits, but no 17 in a row
        "sessionId": "12345678901234567890",  # kept: digits only, a number rather than a VIN
    }
    record = DECODER.decode(native(signals=signals), ARRIVAL)
    assert record.signals == {
        "vehicleSpeed": 1.0,
        "firmware": "2024.44.25.3 7c1bd0b1",
        "sessionId": "12345678901234567890",
    }


def test_a_vehicle_clock_ahead_of_the_stream_is_clamped_to_arrival() -> None:
    ahead = DECODER.decode(native(timestamp=format_time(ARRIVAL + 5 * 60_000)), ARRIVAL)
    assert ahead.event_time_ms == ARRIVAL


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe{\x00", RejectReason.NOT_UTF8),
        (b'{"vin": "5YJ3E1EA7KF317000\xff", "timestamp": 1, "signals": {}}', RejectReason.NOT_UTF8),
        (b'{"vin": "5YJ3E1EA7KF317000", ', RejectReason.MALFORMED_JSON),
        (b"[1, 2, 3]", RejectReason.UNKNOWN_FORMAT),
        (b"hello", RejectReason.UNKNOWN_FORMAT),
        (b'{"something": "else"}', RejectReason.UNKNOWN_FORMAT),
        (orjson.dumps({"timestamp": "2025-03-05T14:32:01Z", "signals": {}}), RejectReason.SCHEMA_VIOLATION),
        (orjson.dumps({"vin": VIN, "signals": {}}), RejectReason.SCHEMA_VIOLATION),
        (native(timestamp="yesterday"), RejectReason.SCHEMA_VIOLATION),
        (native(signals={"vehicleSpeed": "fast"}), RejectReason.SCHEMA_VIOLATION),
        (native(signals="none"), RejectReason.SCHEMA_VIOLATION),
        (native(vin="5YJ3E1EA7KF31700"), RejectReason.INVALID_VIN),
        (native(vin="5YJ3E1EA7KF31700O"), RejectReason.INVALID_VIN),
        (native(vin="5YJ3E1EA7KF3170I0"), RejectReason.INVALID_VIN),
        (native(timestamp=format_time(ARRIVAL + 25 * 3600_000)), RejectReason.TIMESTAMP_OUT_OF_RANGE),
        (native(timestamp=format_time(ARRIVAL - 8 * 24 * 3600_000)), RejectReason.TIMESTAMP_OUT_OF_RANGE),
        (native(signals={"blob": "x" * 5000}), RejectReason.OVERSIZE),
        (
            orjson.dumps({"alerts": [], "createdAt": "2025-03-05T14:32:01Z", "vin": VIN}),
            RejectReason.UNSUPPORTED_RECORD_TYPE,
        ),
    ],
)
def test_rejections_carry_a_reason_and_never_the_vin(data: bytes, reason: RejectReason) -> None:
    error = rejected(data)
    assert error.reason is reason
    assert VIN not in error.detail and VIN.lower() not in error.detail.lower()


def test_numbers_dynamodb_cannot_store_are_refused_at_the_boundary() -> None:
    assert rejected(native(signals={"vehicleSpeed": 1e200})).reason is RejectReason.SCHEMA_VIOLATION
    record = DECODER.decode(
        native(signals={"vehicleSpeed": 3.0, "oemCounter": 1e130, "tiny": 1e-200}), ARRIVAL
    )
    assert record.signals == {"vehicleSpeed": 3.0}
