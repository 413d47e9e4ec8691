"""Synthetic spine-surgery HL7 v2 feed for benchmarks: one ADT^A08 per patient (PID, PV1,
two DG1, two PR1, ~0.8 KB), every patient, visit and control id distinct, all made up.

    python benchmarks/v2_feed.py OUT.hl7 --messages 2000
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from pathlib import Path

PROCS = [("22633", "63047"), ("22551", "22552"), ("63030", "63030"), ("22612", "22614")]
DIAGS = [("M48.062", "M43.16"), ("M50.12", "M48.02"), ("M51.16", "M51.16"), ("M43.16", "M48.062")]


def message(i: int) -> bytes:
    day = date(2024, 1, 2) + timedelta(days=i % 500)
    d = day.strftime("%Y%m%d")
    out = (day + timedelta(days=2)).strftime("%Y%m%d")
    p1, p2 = PROCS[i % len(PROCS)]
    g1, g2 = DIAGS[i % len(DIAGS)]
    segs = [
        f"MSH|^~\\&|EPIC|GOODHEALTH|REG|SPINE|{d}101500||ADT^A08^ADT_A01|BENCH{i:08d}|P|2.5.1",
        f"EVN|A08|{d}101500",
        f"PID|1||DEMO{i:08d}^^^GOODHEALTH^MR||TESTPERSON^ALEX||19700101|F|||"
        "1 MAIN ST^^SPRINGFIELD^IL^62701^USA||^PRN^PH^^^217^5550000",
        f"PV1|1|I|4W^401^1^GOODHEALTH||||1234^BONE^ROBERT^^^DR|||ORT||||1|||1234^BONE^ROBERT"
        f"^^^DR|IN|V{i:08d}|||||||||||||||||||||||||{d}080000|{out}120000",
        f"DG1|1||{g1}^Spinal disorder^I10||{d}|A",
        f"DG1|2||{g2}^Spinal disorder^I10||{d}|F",
        f"PR1|1||{p1}^Spine procedure^C4||{d}093000|||||||5678^CUTTER^SAM^^^DR^^^GOODHEALTH",
        f"PR1|2||{p2}^Spine procedure^C4||{d}093000|||||||5678^CUTTER^SAM^^^DR^^^GOODHEALTH",
    ]
    return "\r".join(segs).encode() + b"\r"


def write(path: Path, n: int) -> None:
    with path.open("wb") as out:
        for i in range(n):
            out.write(message(i) + b"\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    write(args.out, args.messages)
