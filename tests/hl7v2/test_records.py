"""Staged v2 messages → FHIR records: the reused-control-id warning rides along."""

from __future__ import annotations

import hashlib
from pathlib import Path
from zoneinfo import ZoneInfo

from adapters.hl7v2.header import message_digest
from adapters.hl7v2.records import REUSED_CONTROL_ID, convert_staged
from tests.hl7v2.conftest import make_message

CHICAGO = ZoneInfo("America/Chicago")


def test_a_message_under_its_own_identity_has_no_warning() -> None:
    out = convert_staged(make_message("R1"), "FAC|R1", CHICAGO)
    assert out.records and REUSED_CONTROL_ID not in {i.code for i in out.issues}


def test_a_message_staged_beside_another_with_its_control_id_is_converted_with_a_warning() -> None:
    raw = make_message("R1", body_bytes=5)
    out = convert_staged(raw, f"FAC|R1#{message_digest(raw)[:12]}", CHICAGO)
    (warning,) = [i for i in out.issues if i.code == REUSED_CONTROL_ID]
    assert (warning.severity, warning.field) == ("warning", "MSH-10")
    assert "'R1'" in warning.message and "'FAC'" in warning.message
    assert out.records and not out.failed


def test_an_unsupported_type_with_a_reused_control_id_is_still_out_of_scope() -> None:
    raw = make_message("R2", msg_type="ADT^A99^ADT_A01")  # not an event we convert
    out = convert_staged(raw, "FAC|R2#0123456789ab", CHICAGO)
    assert out.out_of_scope and not out.records


def test_message_digest_ignores_only_msh7() -> None:
    a = make_message("D1")
    restamped = a.replace(b"|20250101120000||", b"|20250102000000||", 1)
    assert message_digest(restamped) == message_digest(a)
    assert message_digest(a.replace(b"|P|2.5.1", b"|T|2.5.1")) != message_digest(a)
    assert message_digest(a.replace(b"DOE^JANE", b"DOE^JOHN")) != message_digest(a)
    # Bytes without an MSH segment (a rejected message) are hashed as they are.
    assert message_digest(b"not hl7") == hashlib.sha256(b"not hl7").hexdigest()


def test_site_folder_is_used_when_set_and_reread_after_forget(tmp_path: Path) -> None:
    import shutil

    from adapters.hl7v2 import config

    assert config.site_directory(None) is None
    assert config.site_directory(tmp_path) is None  # a site folder without hl7v2/: bundled
    shutil.copytree(config.MAPPINGS_DIR, tmp_path / "hl7v2")
    site = config.site_directory(tmp_path)
    assert site == tmp_path / "hl7v2"
    try:
        config.use_directory(site)
        assert config.load_config().directory == site
        messages = site / "messages.yaml"
        messages.write_text(messages.read_text().replace("versions: [", 'versions: ["2.3", ', 1))
        assert config.load_config().versions.count("2.3") == 1  # cached until forgotten
        config.forget_loaded()
        assert config.load_config().versions.count("2.3") == 2
    finally:
        config.use_directory(None)
        config.forget_loaded()
    assert config.load_config().directory == config.MAPPINGS_DIR
