"""Rewrite the golden mapping outputs under tests/golden/ (``make golden``).

Run it after a reviewed change to a view, a code map or the v2 mapping, then review and commit
the diff of ``tests/golden/**/*.expected.json``: it is what the change does to registry rows
and issues. ``tests/golden/test_golden.py`` fails until the expected files match.

    python scripts/golden.py            # rewrite the expected outputs from the stored inputs
    python scripts/golden.py --inputs   # also add inputs for views / v2 types that have none

Inputs are kept small and reviewed like code. ``--inputs`` never overwrites one: a view gets
the first sample-feed resource (examples/sample-feed/) of each distinct outcome (disposition and
issue codes), at most MAX_PER_VIEW; a v2 message type gets a synthetic spine-surgery message
built by :func:`spine_message` (made-up patient, DEMO- identifiers). Where the feed shows a view
only one outcome (patients, encounters), a few hand-written variants follow in the input file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.hl7v2.config import load_config  # noqa: E402
from mappings.engine import BUNDLED as BUNDLED_VIEWS  # noqa: E402
from tests.golden.runner import HL7V2, VIEWS, map_resource, mapping_for_view, write_all  # noqa: E402

SAMPLE_FEED = ROOT / "examples" / "sample-feed"
MAX_PER_VIEW = 8

# MSH-9.3 (message structure) per trigger event, as HL7 v2.5.1 defines it.
STRUCTURES = {
    "ADT^A01": "ADT_A01", "ADT^A02": "ADT_A02", "ADT^A03": "ADT_A03", "ADT^A04": "ADT_A01",
    "ADT^A05": "ADT_A05", "ADT^A06": "ADT_A06", "ADT^A07": "ADT_A06", "ADT^A08": "ADT_A01",
    "ADT^A11": "ADT_A09", "ADT^A13": "ADT_A01", "ADT^A14": "ADT_A05", "ADT^A28": "ADT_A05",
    "ADT^A31": "ADT_A05", "ADT^A40": "ADT_A39", "ADT^A47": "ADT_A30", "BAR^P01": "BAR_P01",
    "BAR^P05": "BAR_P05", "BAR^P12": "BAR_P12", "DFT^P03": "DFT_P03", "DFT^P11": "DFT_P11",
    "ORU^R01": "ORU_R01", "SIU^S12": "SIU_S12",
}


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields set (position → value), the others empty."""
    values = [""] * max(fields)
    for n, v in fields.items():
        values[n - 1] = v
    return "|".join([name, *values])


def spine_message(msg_type: str) -> str:
    """A small v2.5.1 message of ``msg_type`` as a spine-surgery feed sends it."""
    kind, event = msg_type.split("^")
    structure = STRUCTURES.get(msg_type, f"{kind}_{event}")
    control = f"GOLD-{kind}-{event}"
    segs = [
        f"MSH|^~\\&|EHR|DEMOHOSP|REGISTRY|SPINE|20250304120000||{msg_type}^{structure}|{control}|P|2.5.1",
        f"EVN|{event}|20250304120000",
        seg("PID", {1: "1", 3: "DEMO-1001^^^DEMOHOSP^MR", 5: "Testperson^Alex", 7: "19600229", 8: "F"}),
    ]
    if kind == "ADT" and event in ("A40", "A47"):
        segs.append("MRG|DEMO-0999^^^DEMOHOSP^MR")
        return "\r".join(segs) + "\r"
    if kind == "ORU":
        segs += [
            "OBR|1|ORD-1|FIL-1|82226-2^NDI panel^LN|||20250601100000",
            "OBX|1|CWE|82227-0^Pain intensity^LN||LA25855-0^Moderate pain^LN||||||F",
            "OBX|2|NM|82237-9^NDI total^LN||14|{score}^score^UCUM|||||F",
        ]
        return "\r".join(segs) + "\r"
    if kind == "SIU" or event in ("A28", "A31"):
        return "\r".join(segs) + "\r"
    discharge = "" if event in ("A01", "A04", "A05", "A13", "A14") else "20250304110000"
    segs += [
        seg("PV1", {1: "1", 2: "I", 3: "4W^401^1", 7: "SURG1^Cutter^Casey", 10: "ORT",
                    19: "DEMO-V-1^^^DEMOHOSP^VN", 44: "20250301063000", 45: discharge}),
        "DG1|1||M48.062^Spinal stenosis, lumbar, with neurogenic claudication^I10||20250301|F",
        seg("PR1", {1: "1", 3: "22633^Lumbar interbody fusion^C4", 5: "20250301081500",
                    11: "SURG1^Cutter^Casey"}),
        seg("PR1", {1: "2", 3: "22842^Posterior instrumentation^C4", 5: "20250301081500"}),
    ]
    return "\r".join(segs) + "\r"


def add_view_inputs() -> list[Path]:
    written = []
    for yaml_file in sorted(BUNDLED_VIEWS.glob("*.yaml")):
        target = VIEWS / f"{yaml_file.stem}.input.ndjson"
        if target.exists():
            continue
        rtype = mapping_for_view(yaml_file.stem).resource_type
        feed = SAMPLE_FEED / f"{rtype}.ndjson"
        picked: dict[tuple[object, ...], bytes] = {}
        for line in feed.read_bytes().splitlines() if feed.exists() else []:
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # the feed's deliberately broken lines test intake, not mappings
            out = map_resource(resource)
            outcome = (out["disposition"], *sorted(i["code"] for i in out["issues"]))
            if outcome not in picked and len(picked) < MAX_PER_VIEW:
                picked[outcome] = line
        if not picked:
            raise SystemExit(f"no {rtype} in {feed}: write {target} by hand")
        target.write_bytes(b"\n".join(picked.values()) + b"\n")
        written.append(target)
    return written


def add_hl7v2_inputs() -> list[Path]:
    written = []
    for msg_type in sorted(load_config().messages):
        target = HL7V2 / f"{msg_type.replace('^', '-')}.hl7"
        if not target.exists():
            target.write_bytes(spine_message(msg_type).encode())
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", action="store_true", help="add inputs for views / v2 types with none")
    args = parser.parse_args(argv)
    if args.inputs:
        VIEWS.mkdir(exist_ok=True)
        HL7V2.mkdir(exist_ok=True)
        for path in [*add_view_inputs(), *add_hl7v2_inputs()]:
            print(f"new input  {path.relative_to(ROOT)}")
    changed = 0
    for case, differs in write_all():
        changed += differs
        if differs:
            print(f"rewritten  {case.expected.relative_to(ROOT)}")
    print(f"{changed} expected file(s) changed; review them with `git diff tests/golden`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
