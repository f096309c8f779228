"""Expected results computed straight from fixture files, independently of the code under test."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import orjson

VIN_RE = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
VIN_TOKEN = re.compile(r"(?<![A-Z0-9])[A-HJ-NPR-Z0-9]{17}(?![A-Z0-9])")


def valid_native_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_bytes().splitlines():
        obj = orjson.loads(line)
        if "signals" in obj and VIN_RE.fullmatch(str(obj.get("vin", "")).strip().upper()):
            records.append(obj)
    return records


def latest_by_vin(path: Path) -> dict[str, dict[str, Any]]:
    """VIN -> the newest value of each signal (records are deltas) and the newest timestamp."""
    latest: dict[str, dict[str, tuple[str, Any]]] = {}
    for record in valid_native_records(path):
        vin = record["vin"].strip().upper()
        signals = latest.setdefault(vin, {})
        for name, value in {"timestamp": record["timestamp"], **record["signals"]}.items():
            if name not in signals or record["timestamp"] > signals[name][0]:
                signals[name] = (record["timestamp"], value)
    return {vin: {name: value for name, (_, value) in signals.items()} for vin, signals in latest.items()}


def vins_in(path: Path) -> set[str]:
    """Every VIN in a fixture: standalone VIN-shaped tokens, raw (base64) payloads included."""
    vins: set[str] = set()
    for line in path.read_bytes().splitlines():
        texts = [line.decode("utf-8", "replace")]
        obj = orjson.loads(line)
        if isinstance(obj, dict) and "_raw_b64" in obj:
            texts.append(base64.b64decode(obj["_raw_b64"]).decode("latin-1"))
        for text in texts:
            vins.update(VIN_TOKEN.findall(text.upper()))
    return vins


def leaked(vins: set[str], blob: str | bytes) -> set[str]:
    """VINs found in ``blob`` in any case, ignoring whitespace."""
    text = blob.decode("latin-1") if isinstance(blob, bytes) else blob
    squeezed = re.sub(r"\s+", "", text).upper()
    return {vin for vin in vins if vin in squeezed}


def dumps(value: Any) -> bytes:
    """JSON for leak scans: binary attributes (KMS ciphertext) are scanned as their raw bytes."""
    return orjson.dumps(value, default=lambda v: v.decode("latin-1") if isinstance(v, bytes) else str(v))
