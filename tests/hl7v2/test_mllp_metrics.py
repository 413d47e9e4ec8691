"""The listener's Prometheus figures move with what a real client sends: messages by ACK
code, the ACK latency histogram and open connections (served on /metrics)."""

from __future__ import annotations

import time

from adapters.hl7v2.ack import ack_code_of
from adapters.hl7v2.framing import frame
from registry_types import metrics
from tests.hl7v2.conftest import MALFORMED, ListenerThread, connect, make_message, msa, read_frame


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_messages_ack_codes_latency_and_connections_are_counted(listener: ListenerThread) -> None:
    aa, ar = _value("registry_mllp_messages_total", ack_code="AA"), _value(
        "registry_mllp_messages_total", ack_code="AR"
    )
    observed = _value("registry_mllp_ack_latency_seconds_count")
    with connect(listener.port) as s:
        for n in range(3):
            s.sendall(frame(make_message(f"MET{n}")))
            assert msa(read_frame(s))[1] == "AA"
        assert _value("registry_mllp_open_connections") >= 1
        s.sendall(frame((MALFORMED / "no_msh.hl7").read_bytes()))
        assert msa(read_frame(s))[1] == "AR"
    assert _value("registry_mllp_messages_total", ack_code="AA") == aa + 3
    assert _value("registry_mllp_messages_total", ack_code="AR") == ar + 1
    assert _value("registry_mllp_ack_latency_seconds_count") == observed + 4
    deadline = time.monotonic() + 5
    while _value("registry_mllp_open_connections") and time.monotonic() < deadline:
        time.sleep(0.05)  # the handler's finally runs after the client closed
    assert _value("registry_mllp_open_connections") == 0


def test_ack_code_of_reads_msa_1() -> None:
    assert ack_code_of(b"MSH|^~\\&|A|B\rMSA|AE|X1\rERR|||101") == "AE"
    assert ack_code_of(b"MSH#^~\\&#A\rMSA#CA#X1") == "CA"
    assert ack_code_of(b"MSH|^~\\&|A") == "unknown"
