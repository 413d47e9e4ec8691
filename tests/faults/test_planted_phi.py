"""Patient data never leaks: documents broken in every position, each with planted PHI right
where the parser gives up, imported by the real command; every output, log line and stored
error text is searched for the planted values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from sqlalchemy import create_engine, text

from tests.conftest import write_config_file

EXE = str(Path(sys.executable).with_name("registry-adapter"))

# Values that cannot occur by chance: an MRN, a family name, a phone number, a birth date.
PHI = ("MRN4417723", "Quixwellton", "555-0199-442", "1961-07-23")
MRN, NAME, PHONE, BIRTH = PHI

_patient = (
    '{"resourceType":"Patient","id":"p%d","identifier":[{"value":"' + MRN + '"}],'
    '"name":[{"family":"' + NAME + '"}],"telecom":[{"value":"' + PHONE + '"}],"birthDate":"' + BIRTH + '"}'
)


def _broken_documents(folder: Path) -> None:
    good = _patient % 0
    lines = [
        good,
        # The parser stops right at each planted value, in every kind of position.
        good.replace(f'"{MRN}"', MRN).replace('"p0"', '"p1"'),  # unquoted value
        good.replace(f'"family":"{NAME}"', f'"family" {NAME}').replace('"p0"', '"p2"'),  # no colon
        good.replace(f'"{PHONE}"', f'"{PHONE}').replace('"p0"', '"p3"')[:-2],  # cut inside a string
        good.replace('"birthDate"', BIRTH).replace('"p0"', '"p4"'),  # value where a key goes
        good.replace('"p0"', '"p5"')[:-1] + f",{NAME}}}",  # garbage before the end
        good.replace('"p0"', '"p6"') + MRN,  # trailing text
    ]
    lines_bytes = [line.encode() for line in lines]
    # Invalid UTF-8 in the middle of the name.
    bad_name = NAME[:4].encode() + b"\xff" + NAME[4:].encode()
    lines_bytes.append((_patient % 7).encode().replace(NAME.encode(), bad_name))
    # A record too deep to stage, with the planted values inside.
    deep: object = json.loads(_patient % 8)
    for _ in range(150):
        deep = {"extension": [deep]}
    lines_bytes.append(json.dumps({"resourceType": "Patient", "id": "p9", "contained": [deep]}).encode())
    (folder / "broken.ndjson").write_bytes(b"\n".join(lines_bytes) + b"\n")

    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": json.loads(_patient % 10)}, {"resource": json.loads(_patient % 11)}]}
    pretty = json.dumps(bundle, indent=2)
    for n, (old, new) in enumerate([
        (f'"{MRN}"', MRN),
        (f'"family": "{NAME}"', f'"family" "{NAME}"'),
        (f'"{PHONE}"', f'"{PHONE}\x01"'),  # a control character inside a string
    ]):
        (folder / f"bundle{n}.json").write_text(pretty.replace(old, new, 1))
    (folder / "bundle_cut.json").write_text(pretty[: pretty.index(BIRTH) + 5])
    cut_char = b"Qu\xc3" + NAME[2:].encode()  # a two-byte sequence missing its second byte
    (folder / "bundle_utf8.json").write_bytes(pretty.encode().replace(NAME.encode(), cut_char, 1))
    single = json.dumps(json.loads(_patient % 12), indent=2)
    (folder / "single.json").write_text(single.replace(f'"{MRN}"', MRN))
    # Bundle entries without an id or type, holding PHI.
    (folder / "noid.ndjson").write_text(
        json.dumps({"resourceType": "Patient", "name": [{"family": NAME}]}) + "\n"
        + json.dumps({"name": [{"family": NAME}], "identifier": [{"value": MRN}]}) + "\n"
        + json.dumps([MRN, NAME]) + "\n"
    )


def _run(config: Path, *args: str) -> str:
    proc = subprocess.run([EXE, "--config", str(config), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "400"})
    return proc.stdout + proc.stderr


def test_no_planted_phi_in_any_output_log_or_error_text(tmp_path: Path) -> None:
    folder = tmp_path / "sent"
    folder.mkdir()
    _broken_documents(folder)
    config = write_config_file(tmp_path, logging={"format": "json", "level": "DEBUG"})
    cfg = yaml.safe_load(config.read_text())

    outputs = {
        "import": _run(config, "import", str(folder)),
        "import --json": _run(config, "import", "--json", str(folder)),
        "errors list": _run(config, "errors", "list"),
        "errors list --json": _run(config, "errors", "list", "--json"),
        "errors causes": _run(config, "errors", "causes"),
        "errors causes --json": _run(config, "errors", "causes", "--json"),
        "runs list --json": _run(config, "runs", "list", "--json"),
    }
    engine = create_engine(cfg["database"]["url"])
    with engine.connect() as conn:
        codes = [r[0] for r in conn.execute(text("SELECT code FROM mapping_errors"))]
        # Everything the review pages show about errors and runs (raw records aside, which are
        # kept on purpose and shown only to reviewers).
        outputs["mapping_errors"] = json.dumps([list(r) for r in conn.execute(text(
            "SELECT code, field, value, message, cause_id, resource_id FROM mapping_errors"))], default=str)
        outputs["staging"] = json.dumps([list(r) for r in conn.execute(text(
            "SELECT resource_type, resource_id, origin FROM staging"))], default=str)
        outputs["sync_runs"] = json.dumps([list(r) for r in conn.execute(text(
            "SELECT error, counts FROM sync_runs"))], default=str)
    engine.dispose()

    # Every broken document became errors (the scan is not vacuous), and the good ones mapped.
    assert codes.count("intake.malformed_json") >= 12, codes
    assert "intake.record_too_deep" in codes
    assert '"invalid": ' in outputs["import --json"]
    leaks = {(where, value) for where, out in outputs.items() for value in PHI if value in out}
    assert not leaks, leaks
