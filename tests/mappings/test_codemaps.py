"""Code maps: matching rules, scope, and errors that point at file and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mappings.codemaps import BUNDLED, CodeMap, CodeMapError, append_code, load_codemap, load_codemaps


@pytest.fixture(scope="module")
def maps():  # type: ignore[no-untyped-def]
    return load_codemaps()


def test_procedure_codes_by_exact_pattern_and_modifier(maps) -> None:  # type: ignore[no-untyped-def]
    p = maps["spine-procedures"]
    assert p.lookup("cpt", "22633").values["category"] == "plif_tlif"
    assert p.lookup("cpt", "22633:59").values["category"] == "plif_tlif"  # CPT modifier
    assert p.lookup("icd10pcs", "0SG00AJ").values["category"] == "plif_tlif"  # qualifier J
    assert p.lookup("icd10pcs", "0SG0071").values["category"] == "posterior_lumbar_fusion"
    assert p.lookup("icd10pcs", "0RG10A0").values["category"] == "acdf"
    assert p.lookup("cpt", "22842").values["role"] == "instrumentation"
    assert p.system_name("http://www.ama-assn.org/go/cpt") == p.system_name("C4") == "cpt"


def test_scope_separates_unmapped_spine_codes_from_other_surgery(maps) -> None:  # type: ignore[no-untyped-def]
    p = maps["spine-procedures"]
    assert p.lookup("cpt", "22899") is None and p.in_scope("cpt", "22899")
    assert not p.in_scope("cpt", "27447")  # total knee arthroplasty


def test_icd10cm_families_dotted_or_not(maps) -> None:  # type: ignore[no-untyped-def]
    d = maps["spine-diagnoses"]
    for code in ("M48.062", "M48062", " m48.061 "):
        entry = d.lookup("icd10cm", code)
        assert entry is not None and entry.values == {
            "category": "stenosis",
            "region": "lumbar",
            "label": "Spinal stenosis, lumbar",
        }
    assert d.lookup("icd10cm", "M50.121").values["category"] == "radiculopathy"
    assert d.lookup("icd10cm", "M51.362").values["category"] == "degenerative_disc_disease"
    assert not d.in_scope("icd10cm", "E11.9") and d.in_scope("icd10cm", "M48.9")


@pytest.mark.parametrize(
    ("code", "category", "region"),
    [
        # Vertebral fractures (spine-registry.md: S12/S22/S32), with the 7th-character extension
        # (A = initial encounter) hospitals always send.
        ("S12.000A", "fracture", "occipito_atlanto_axial"),  # C1
        ("S12.100A", "fracture", "occipito_atlanto_axial"),  # C2 (dens)
        ("S12.500A", "fracture", "cervical"),  # C6
        ("S12.9XXA", "fracture", "cervical"),
        ("S22.060A", "fracture", "thoracic"),  # T7-T8
        ("S32.010A", "fracture", "lumbar"),  # L1
        ("S32059A", "fracture", "lumbar"),  # undotted
        ("S32.10XA", "fracture", "sacral"),
        # Tumours (spine-registry.md: C41.2, C79.51).
        ("C41.2", "tumour", None),
        ("C79.51", "tumour", None),
    ],
)
def test_fracture_and_tumour_codes_are_spine_diagnoses(
    maps: dict[str, CodeMap], code: str, category: str, region: str | None
) -> None:
    d = maps["spine-diagnoses"]
    entry = d.lookup("icd10cm", code)
    assert entry is not None, code
    assert (entry.values["category"], entry.values["region"]) == (category, region)
    assert d.in_scope("icd10cm", code)


@pytest.mark.parametrize(
    "code",
    # Same ICD-10-CM blocks, not the spine: hyoid/larynx, sternum, ribs, coccyx, pelvis, and
    # other bone tumours or metastases.
    ["S12.8XXA", "S22.20XA", "S22.31XA", "S32.2XXA", "S32.401A", "C41.4", "C79.52", "C79.31"],
)
def test_other_fractures_and_tumours_stay_out_of_scope(maps: dict[str, CodeMap], code: str) -> None:
    d = maps["spine-diagnoses"]
    assert d.lookup("icd10cm", code) is None and not d.in_scope("icd10cm", code)


def test_every_allowed_category_has_codes(maps: dict[str, CodeMap]) -> None:
    d = maps["spine-diagnoses"]
    used = {e.values["category"] for e in d.entries()}
    assert used == set(d.value_columns["category"])


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "codemaps"
    shutil.copytree(BUNDLED, dest)
    return dest


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("cpt,22633,exact,plif_tlif,lumbar,index,95,false,dup,x", "duplicate code 22633 (first at line 3)"),
        ("icd9,123,exact,plif_tlif,lumbar,index,95,false,x,x", "unknown system 'icd9'"),
        ("cpt,11111,exact,tlif,lumbar,index,95,false,x,x", "category 'tlif' is not one of"),
        ("cpt,11112,exact,plif_tlif,lumbar,index,high,false,x,x", "rank must be a whole number"),
        ("cpt,11113,fuzzy,plif_tlif,lumbar,index,1,false,x,x", "match must be exact, prefix or pattern"),
    ],
)
def test_bad_rows_are_reported_with_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    folder = _copy(tmp_path)
    table = folder / "spine-procedures.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([*lines, row]) + "\n")
    with pytest.raises(CodeMapError) as err:
        load_codemap(folder / "spine-procedures.yaml")
    assert f"spine-procedures.csv:{len(lines) + 1}: " in str(err.value)
    assert message in str(err.value)


def test_every_bad_row_is_reported_not_only_the_first(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    table = folder / "spine-procedures.csv"
    lines = table.read_text().splitlines()
    bad = [
        "cpt,22633,exact,plif_tlif,lumbar,index,95,false,dup,x",
        "cpt,11111,exact,tlif,lumbar,index,high,false,x,x",  # two bad values in one row
        "cpt,22633,exact,plif_tlif,lumbar,index,95,false,dup again,x",
    ]
    table.write_text("\n".join([*lines, *bad]) + "\n")
    problems: list[str] = []
    maps = load_codemaps(folder, problems=problems)
    n = len(lines)
    assert [p.split(": ", 1)[0] for p in problems] == [
        f"{table}:{n + 1}",
        f"{table}:{n + 2}",
        f"{table}:{n + 2}",
        f"{table}:{n + 3}",
    ]
    assert "duplicate code 22633 (first at line 3)" in problems[0]
    assert "category 'tlif' is not one of" in problems[1] and "rank must be a whole number" in problems[2]
    assert "duplicate code 22633 (first at line 3)" in problems[3]
    # The broken site copy is not used; the bundled map of that name still is.
    assert maps["spine-procedures"].table.parent == BUNDLED
    with pytest.raises(CodeMapError) as err:
        load_codemap(folder / "spine-procedures.yaml")
    assert err.value.problems == problems


def test_append_code_checks_values_and_takes_effect(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    cmap = load_codemap(folder / "spine-procedures.yaml")
    with pytest.raises(CodeMapError, match="category 'nonsense'"):
        append_code(
            cmap, "cpt", "22899", {"category": "nonsense", "module": "lumbar", "role": "index", "rank": 1}
        )
    append_code(
        cmap,
        "cpt",
        "22899",
        {
            "category": "lumbar_laminectomy",
            "module": "lumbar",
            "role": "index",
            "rank": 10,
            "revision": "false",
            "label": "Unlisted, reviewed",
        },
    )
    added = cmap.lookup("cpt", "22899")
    assert added is not None and added.values["category"] == "lumbar_laminectomy"
    reread = load_codemap(folder / "spine-procedures.yaml")
    assert reread.lookup("cpt", "22899") is not None
