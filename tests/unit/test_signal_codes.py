"""``schemas.signal_codes``: one table, bijective between signal names and the attribute names of
``vehicle-state``, never colliding with the item's other attributes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.signals import CANONICAL_SIGNALS
from processors.tesla import NUMERIC_FIELDS, TESLA_FIELD_NAMES
from schemas.signal_codes import (
    CANONICAL_CODES,
    RESERVED_ATTRIBUTES,
    TESLA_FIELD_NUMBERS,
    UnknownCode,
    decode,
    encode,
    is_code,
)

ALL_TESLA = sorted(TESLA_FIELD_NAMES)
names = (
    st.text(max_size=40)
    | st.sampled_from(ALL_TESLA + sorted(CANONICAL_SIGNALS) + sorted(RESERVED_ATTRIBUTES))
    | st.from_regex(r"(Field|t|~|~t|~~)[0-9]{0,4}", fullmatch=True)
    | st.sampled_from(sorted(CANONICAL_CODES.values()))
)
"""Random names, and the ones near the table's edges: Tesla and canonical names, ``Field{n}`` with
known, unknown and zero-padded numbers, and names that look like codes."""


def test_every_canonical_signal_has_one_letter_of_its_own() -> None:
    assert set(CANONICAL_CODES) == CANONICAL_SIGNALS
    assert len(set(CANONICAL_CODES.values())) == len(CANONICAL_CODES)
    assert all(len(code) == 1 for code in CANONICAL_CODES.values())
    assert (encode("vehicleSpeed"), encode("location"), encode("soc"), encode("shiftState")) == (
        "v",
        "l",
        "s",
        "g",
    )
    # Tesla fields that decoding turns into canonical signals keep their own Tesla code.
    assert {encode(field) for field in NUMERIC_FIELDS} == {
        f"t{TESLA_FIELD_NUMBERS[f]}" for f in NUMERIC_FIELDS
    }


def test_tesla_fields_are_coded_by_their_protobuf_field_number() -> None:
    assert encode("PackVoltage") == "t6" and decode("t6") == "PackVoltage"
    assert len(ALL_TESLA) == 277
    assert sorted(decode(encode(name)) for name in ALL_TESLA) == ALL_TESLA
    assert len({encode(name) for name in ALL_TESLA}) == 277
    # A field our protos lack arrives as Field{n}; it keeps that number as its code.
    assert encode("Field9999") == "t9999" and decode("t9999") == "Field9999"
    # Field{n} of a number the protos name, or zero-padded, is just a name (else two names share a code).
    assert (
        encode("Field6") == "~Field6"
        and encode("Field0") == "~Field0"
        and encode("Field09999") == "~Field09999"
    )


def test_reserved_attributes_are_never_codes() -> None:
    for attribute in RESERVED_ATTRIBUTES:
        assert not is_code(attribute)
        with pytest.raises(UnknownCode):
            decode(attribute)
    for bad in ("t", "t0", "t06", "x", "timestamp", "vehicleSpeed", ""):
        assert not is_code(bad), bad


@settings(max_examples=2_000, deadline=None)
@given(names)
def test_encode_is_injective_and_decode_inverts_it(name: str) -> None:
    code = encode(name)
    assert decode(code) == name
    assert encode(decode(code)) == code
    assert code not in RESERVED_ATTRIBUTES
    assert is_code(code)


@settings(max_examples=2_000, deadline=None)
@given(st.text(max_size=12) | st.from_regex(r"t[0-9]{1,4}|[a-z]|~.{0,5}", fullmatch=True))
def test_every_code_decodes_to_the_one_name_that_encodes_to_it(code: str) -> None:
    if is_code(code):
        assert encode(decode(code)) == code
    else:
        with pytest.raises(UnknownCode):
            decode(code)


@given(st.lists(names, unique=True, max_size=30))
def test_distinct_names_get_distinct_codes(batch: list[str]) -> None:
    assert len({encode(name) for name in batch}) == len(batch)
