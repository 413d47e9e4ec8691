"""``ResponseIndex``: one walk of a response, shared by recognition, answers and totals."""

from __future__ import annotations

from mappings.prom_fhir import ResponseIndex, walk_items
from mappings.proms import InstrumentRegistry
from tests.proms.conftest import integer, response

ODI_URL = "http://example.org/fhir/Questionnaire/OswestryDisabilityIndexQuestionnaire"


def test_items_in_walk_order_with_their_link_ids() -> None:
    nested = {"linkId": "g", "item": [integer("odi-2", 1)]}
    under_answer = {
        "linkId": "odi-3",
        "answer": [{"valueInteger": 2, "item": [integer("odi-4", 3)]}],
    }
    qr = response([integer("odi-1", 0), nested, under_answer, {"text": "no linkId"}, "not an item"])
    index = ResponseIndex.of(qr)
    walked = [i["linkId"] for i in walk_items(qr["item"]) if isinstance(i.get("linkId"), str)]
    assert [link_id for link_id, _ in index.items] == walked == ["odi-1", "g", "odi-2", "odi-3", "odi-4"]
    assert all(item["linkId"] == link_id for link_id, item in index.items)


def test_a_shared_index_gives_what_each_step_finds_alone(registry: InstrumentRegistry) -> None:
    qr = response([integer(f"odi-{n}", n % 6) for n in range(1, 11)], ODI_URL)
    index = ResponseIndex.of(qr)
    instrument = registry.recognise(qr, index)
    assert instrument is not None and instrument is registry.recognise(qr)
    assert instrument.extract_answers(qr, index) == instrument.extract_answers(qr)
    assert instrument.reported_totals(qr, index) == instrument.reported_totals(qr)
