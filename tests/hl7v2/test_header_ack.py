"""Fast MSH check and ACK building; ACKs are read back with python-hl7 (an independent parser)."""

from __future__ import annotations

import hl7
import pytest

from adapters.hl7v2.ack import build_ack
from adapters.hl7v2.header import HeaderCheckError, read_header
from tests.hl7v2.conftest import make_message


def test_header_fields_and_tolerated_prefixes() -> None:
    raw = make_message("ID1", facility="FAC^1.2.3^ISO")
    for prefix in (b"", b"\xef\xbb\xbf", b"\r\n", b"\x0b"):
        h = read_header(prefix + raw)
        assert (h.control_id, h.message_type, h.message_structure, h.version) == (
            "ID1", "ADT^A08", "ADT_A01", "2.5.1")
        assert h.sending_facility == "FAC^1.2.3^ISO"


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (b"", "hl7.empty", "MSH"),
        (b"PID|1\r", "hl7.no_msh", "MSH"),
        (b"MSH|^~", "hl7.bad_msh", "MSH"),
        (b"MSH|^^^^|A|B\r", "hl7.bad_encoding_characters", "MSH-2"),
        (make_message("X", version="2.7.1"), "hl7.unsupported_version", "MSH-12"),
        (make_message("X", msg_type="ADT^A99"), "hl7.unsupported_message", "MSH-9"),
        (make_message("X", msg_type="ZZZ^Z01"), "hl7.unsupported_message", "MSH-9"),
        (make_message("X", msg_type=""), "hl7.missing_message_type", "MSH-9"),
        (make_message(""), "hl7.missing_control_id", "MSH-10"),
    ],
)
def test_header_errors(raw: bytes, code: str, field: str) -> None:
    with pytest.raises(HeaderCheckError) as info:
        read_header(raw)
    assert (info.value.error.code, info.value.error.field) == (code, field)


def test_unsupported_event_vs_type_err_codes() -> None:
    with pytest.raises(HeaderCheckError) as event:
        read_header(make_message("X", msg_type="ADT^A99"))
    with pytest.raises(HeaderCheckError) as mtype:
        read_header(make_message("X", msg_type="ZZZ^Z01"))
    assert (event.value.error.err_code, mtype.value.error.err_code) == ("201", "200")


def test_ack_read_back_with_python_hl7_v25() -> None:
    h = read_header(make_message("CTRL-9", facility="FAC^1.2.3^ISO"))
    ack = hl7.parse(build_ack(h, "AE", err_code="101", text="MSH-10 empty | really",
                              location="MSH-10").decode())
    assert str(ack.segment("MSH")[9]) == "ACK^A08^ACK"
    assert str(ack.segment("MSH")[6]) == "FAC^1.2.3^ISO"  # sender's facility echoed as-is
    assert str(ack.segment("MSA")[1]) == "AE" and str(ack.segment("MSA")[2]) == "CTRL-9"
    err = ack.segment("ERR")
    assert str(err[2]) == "MSH^1^10"
    assert str(err[3][0][0]) == "101" and str(err[3][0][2]) == "HL70357"
    assert ack.unescape(str(err[8])) == "MSH-10 empty | really"


def test_ack_v23_uses_err1_and_msa3() -> None:
    h = read_header(make_message("C23", version="2.3", msg_type="ADT^A01"))
    ack = hl7.parse(build_ack(h, "AR", err_code="200", text="nope", location="MSH-9").decode())
    assert str(ack.segment("MSA")[3]) == "nope"
    assert str(ack.segment("ERR")[1]).startswith("MSH^1^9^200&")


def test_ack_without_header() -> None:
    ack = hl7.parse(build_ack(None, "AR", err_code="100", text="no MSH").decode())
    assert str(ack.segment("MSA")[1]) == "AR" and str(ack.segment("MSA")[2]) == ""
