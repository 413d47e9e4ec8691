"""HL7 v2 message → FHIR R4 resources, driven by mappings/hl7v2/*.yaml.

``convert_message`` never raises for bad input: everything wrong ends up in
``ConversionResult.errors`` (severity "error" or "warning") naming the segment and field, and
whatever could be converted is still returned (a Procedure with a bad PR1-5 keeps its code;
the date error travels with it), so one bad field does not hide a surgery from the registry.

Ids are hashes of the keys in resources.yaml (e.g. MRN authority + MRN, visit number,
patient + procedure code + date) so a resent or updated message (A08, BAR^P05) yields the same
ids and updates in place. Cancels: A11 reports the Encounter as deleted, A13 re-emits the
Encounter in-progress without period.end (discharge reversed), PR1-20/DG1-21 = D deletes that
Procedure/Condition. The choices are written down in mappings/hl7v2/messages.yaml.
"""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from adapters.hl7v2 import datatypes as dt
from adapters.hl7v2.config import HL7Config, MessageRule, load_config
from adapters.hl7v2.header import HeaderCheckError, MessageHeader, read_header
from adapters.hl7v2.parse import HL7ParseError, ParsedMessage, Segment, parse

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConversionIssue:
    """One problem with a message. ``message`` never quotes field values (PHI)."""

    code: str
    message: str
    segment: str | None = None
    field: str | None = None
    severity: str = "error"  # "error" | "warning"
    resource_type: str | None = None  # the resource being converted, when there was one
    resource_id: str | None = None


@dataclass(slots=True)
class ConversionResult:
    source: str
    header: MessageHeader | None = None
    resources: list[JSON] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    errors: list[ConversionIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No error-severity issue (warnings allowed)."""
        return not any(e.severity == "error" for e in self.errors)


@dataclass(frozen=True, slots=True)
class FieldPath:
    segment: str
    field: int
    filter: tuple[int, str] | None
    component: int | None
    subcomponent: int | None
    name: str = ""  # "SEG-F", set by field_path (read for every rule applied)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.segment}-{self.field}")


_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)(?:\((\d+)=([^)]*)\))?(?:\.(\d+))?(?:\.(\d+))?$")


@lru_cache(maxsize=1024)
def field_path(text: str) -> FieldPath:
    m = _PATH.match(text.strip())
    if not m:
        raise ValueError(f"bad field path {text!r} in resources.yaml")
    seg, fld, fcomp, fval, c, s = m.groups()
    return FieldPath(
        seg,
        int(fld),
        (int(fcomp), fval) if fcomp else None,
        int(c) if c else None,
        int(s) if s else None,
    )


@lru_cache(maxsize=1024)
def alternatives(expr: str) -> tuple[tuple[str, ...], ...]:
    """'A | B + C' → (('A',), ('B', 'C'))."""
    return tuple(tuple(p.strip() for p in alt.split("+")) for alt in expr.split("|"))


@lru_cache(maxsize=1024)
def _source_paths(expr: str) -> tuple[FieldPath, ...]:
    """The field read by each alternative of a ``from:`` expression (its first part)."""
    return tuple(field_path(alt[0]) for alt in alternatives(expr))


class _Run:
    """State of one conversion; implements datatypes.Context."""

    def __init__(self, msg: ParsedMessage, cfg: HL7Config, tz: ZoneInfo, result: ConversionResult):
        self.msg = msg
        self.cfg = cfg
        self.tz = tz
        self.result = result
        self.ids: dict[str, str] = {}
        self.produced: dict[tuple[str, int], str] = {}  # (mapping, segment position) → id
        self.extra: dict[tuple[str, str], JSON] = {}
        self._segment: str | None = None
        self._field: str | None = None
        self._resource: tuple[str, str] | None = None
        self._valued: dict[tuple[int, int, tuple[int, str] | None], list[dt.Repetition]] = {}
        # (segment name, position read from) → the segment a path there reads
        self._context: dict[tuple[str, int], Segment | None] = {}

    # datatypes.Context
    def table(self, name: str) -> dict[str, Any]:
        return self.cfg.tables.get(name, {})

    def warn(self, code: str, message: str) -> None:
        self.issue(code, message, "warning")

    def add_resource(self, resource: JSON) -> None:
        self.extra.setdefault((resource["resourceType"], resource["id"]), resource)

    def default_authority(self) -> str:
        return self.msg.header.sending_facility.split(self.msg.header.encoding_characters[0])[0]

    def issue(self, code: str, message: str, severity: str = "error",
              segment: str | None = None, fld: str | None = None) -> None:
        seg = segment or self._segment
        fname = fld or self._field
        prefix = f"{fname}: " if fname and not message.startswith(fname) else ""
        rtype, rid = self._resource or (None, None)
        self.result.errors.append(
            ConversionIssue(code, prefix + message, seg, fname, severity, rtype, rid)
        )

    def ref_id(self, mapping: str, current: Segment) -> str | None:
        """Id of the resource ``mapping`` made from the nearest preceding segment of its type
        (else from the first one), e.g. an OBX's QuestionnaireResponse is its OBR's."""
        spec = self.cfg.resources.get(mapping)
        if spec is None:
            raise ValueError(f"resources.yaml: ref to unknown mapping {mapping!r}")
        src = self.context_segment(spec["segment"], current)
        if src is not None and (mapping, src.position) in self.produced:
            return self.produced[(mapping, src.position)]
        return self.ids.get(mapping) if spec.get("occurs") == "first" else None

    # field access
    def context_segment(self, name: str, current: Segment | None) -> Segment | None:
        if current is not None and current.name == name:
            return current
        key = (name, current.position if current is not None else 0)
        if key in self._context:
            return self._context[key]
        found = self._context[key] = self._find_context_segment(name, current)
        return found

    def _find_context_segment(self, name: str, current: Segment | None) -> Segment | None:
        before = None
        first = None
        for seg in self.msg.segments:
            if seg.name != name:
                continue
            first = first or seg
            if current is not None and seg.position < current.position:
                before = seg
        return before or first

    def repetitions(self, path: FieldPath, current: Segment | None) -> list[dt.Repetition]:
        seg = self.context_segment(path.segment, current)
        if seg is None:
            return []
        if path.segment == "MSH" and seg.fields is None:
            return []
        key = (seg.position, path.field, path.filter)
        reps = self._valued.get(key)
        if reps is None:
            # Valued repetitions of a field (those matching the path's filter), once per
            # message: rules read the same fields many times (ids, conditions, elements);
            # callers never mutate the list.
            reps = [r for r in seg.field(path.field) if any(map(any, r))]
            if path.filter:
                ci, want = path.filter
                reps = [r for r in reps if dt.comp(r, ci).upper() == want.upper()]
            self._valued[key] = reps
        return reps

    def value(self, text: str, current: Segment | None) -> str:
        if text.startswith("@"):
            # The id of that mapping's resource for this segment: the nearest preceding one
            # (a PR1's Encounter is the PV1 of its own visit in a multi-visit BAR^P01).
            if current is None:
                return self.ids.get(text[1:], "")
            return self.ref_id(text[1:], current) or ""
        path = field_path(text)
        reps = self.repetitions(path, current)
        if not reps:
            return ""
        return dt.comp(reps[0], path.component or 1, path.subcomponent or 1)

    def first_value(self, expr: str, current: Segment | None) -> str:
        for alt in alternatives(expr):
            parts = [self.value(p, current) for p in alt]
            if all(parts):
                return " ".join(parts)
        return ""

    def field_reps(self, expr: str, current: Segment | None) -> tuple[str, list[dt.Repetition]]:
        return self.paths_reps(_source_paths(expr), current)

    def paths_reps(
        self, paths: tuple[FieldPath, ...], current: Segment | None
    ) -> tuple[str, list[dt.Repetition]]:
        """The first of ``paths`` with a value: its field name and valued repetitions."""
        for path in paths:
            reps = self.repetitions(path, current)
            if reps:
                return path.name, reps
        return (paths[0].name if paths else ""), []


def _set(resource: JSON, path: str, value: Any, as_list: bool) -> None:
    node = resource
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    last = keys[-1]
    if as_list:
        existing = node.setdefault(last, [])
        if isinstance(value, list):
            existing.extend(value)
        else:
            existing.append(value)
    else:
        node[last] = value


def _remove(resource: JSON, path: str) -> None:
    keys = path.split(".")
    chain = [resource]
    for key in keys[:-1]:
        nxt = chain[-1].get(key)
        if not isinstance(nxt, dict):
            return
        chain.append(nxt)
    chain[-1].pop(keys[-1], None)
    for depth in range(len(keys) - 2, -1, -1):  # drop parents left empty
        if not chain[depth + 1]:
            chain[depth].pop(keys[depth], None)


def _has(resource: JSON, path: str) -> bool:
    node: Any = resource
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@dataclass(frozen=True, slots=True)
class _Rule:
    """An element rule of resources.yaml, read once: which branch of ``_apply_rule`` it takes
    and the paths it reads, so applying it (64 times a message) looks nothing up again."""

    rule: JSON
    path: str
    as_list: bool
    unless: str | None
    when: JSON | None
    kind: str  # fixed | ref | qr_items | status_when | obx_value | performed | convert
    sources: tuple[FieldPath, ...] | None  # None: "as"/"from" missing or bad (raised on use)
    converter: Any
    repeat: bool


_COMPILED: dict[int, tuple[JSON, _Rule]] = {}


def _compiled(rule: JSON) -> _Rule:
    """The compiled form of ``rule`` (keyed by identity: rules live as long as their
    HL7Config; the dict itself is kept to make a reused id impossible)."""
    hit = _COMPILED.get(id(rule))
    if hit is not None and hit[0] is rule:
        return hit[1]
    if "fixed" in rule:
        kind = "fixed"
    elif "ref" in rule:
        kind = "ref"
    elif rule.get("as") == "qr_items":
        kind = "qr_items"
    elif "status_when" in rule:
        kind = "status_when"
    elif rule.get("as") in ("obx_value", "performed"):
        kind = rule["as"]
    else:
        kind = "convert"
    sources: tuple[FieldPath, ...] | None = None
    if kind in ("obx_value", "performed", "convert") and "as" in rule and "from" in rule:
        with suppress(ValueError):  # a bad path: raised when the rule is applied, as before
            sources = _source_paths(rule["from"])
    compiled = _Rule(
        rule=rule,
        path=rule["path"],
        as_list=bool(rule.get("list") or rule.get("repeat")),
        unless=rule.get("unless") or None,
        when=rule.get("when") or None,
        kind=kind,
        sources=sources,
        converter=dt.CONVERTERS.get(rule.get("as", "")) if kind == "convert" else None,
        repeat=bool(rule.get("repeat")),
    )
    _COMPILED[id(rule)] = (rule, compiled)
    return compiled


_OBX_6 = field_path("OBX-6")


def _apply_rule(run: _Run, resource: JSON, rule_data: JSON, seg: Segment) -> None:
    rule = _compiled(rule_data)
    path = rule.path
    as_list = rule.as_list
    if rule.unless and _has(resource, rule.unless):
        return
    if rule.when and not _condition(run, rule.when, seg):
        return
    kind = rule.kind
    if kind == "fixed":
        _set(resource, path, rule_data["fixed"], as_list)
        return
    if kind == "ref":
        target = rule_data["ref"]
        rid = run.ref_id(target, seg)
        if rid:
            rtype = run.cfg.resources[target].get("resourceType", target)
            ref: JSON = {"reference": f"{rtype}/{rid}"}
            if rule_data.get("ref_key"):  # e.g. Patient.link {other: ref, type: replaced-by}
                ref = {rule_data["ref_key"]: ref, **rule_data.get("with", {})}
            _set(resource, path, ref, as_list)
        return
    if kind == "qr_items":
        items = _qr_items(run, seg)
        if items:
            resource[path] = items
        return
    if kind == "status_when":
        cond = rule_data["status_when"]
        present = bool(run.first_value(cond["field"], seg))
        _set(resource, path, cond["present" if present else "absent"], as_list)
        return
    if rule.sources is None:  # raises what reading the rule raised before it was compiled
        rule_data["as"]
        fname, reps = run.field_reps(rule_data["from"], seg)
    else:
        fname, reps = run.paths_reps(rule.sources, seg)
    run._field = fname
    try:
        if kind == "obx_value":
            value_type = run.value("OBX-2.1", seg)
            units = run.repetitions(_OBX_6, seg)
            choice = dt.obx_value(reps, value_type, units[0] if units else [], run)
            if choice is not None:
                resource[path + choice.suffix] = choice.value
            return
        if kind == "performed":
            if not reps:
                return
            minutes = run.value(rule_data["minutes_from"], seg) if rule_data.get("minutes_from") else ""
            choice = dt.performed(reps[0], run, rule_data, minutes)
            if choice is not None:
                resource[path + choice.suffix] = choice.value
            return
        converter = rule.converter
        if converter is None:
            raise ValueError(f"resources.yaml: unknown converter {rule_data['as']!r}")
        if not reps:
            if "default" in rule_data:
                _set(resource, path, rule_data["default"], as_list)
            return
        values = []
        for rep in reps if rule.repeat else reps[:1]:
            try:
                out = converter(rep, run, rule_data)
            except dt.BadValue as bad:
                run.issue(bad.code, str(bad), bad.severity)
                out = rule_data.get("default")
            if out is not None:
                values.append(out)
        if values and rule_data.get("text_from") and isinstance(values[0], dict):
            text = run.first_value(rule_data["text_from"] + ".1", seg)
            if text and "text" not in values[0]:
                values[0]["text"] = text
        if values:
            _set(resource, path, values if as_list else values[0], as_list)
    except dt.BadValue as bad:
        run.issue(bad.code, str(bad), bad.severity)
    finally:
        run._field = None


def _condition(run: _Run, cond: JSON, seg: Segment) -> bool:
    """``when:`` of resources.yaml: {field, in_table|not_in_table|equals|present|later_than}
    or {any: [...]}."""
    if "any" in cond:
        return any(_condition(run, c, seg) for c in cond["any"])
    value = run.first_value(cond["field"], seg).upper()
    if "in_table" in cond:
        return value in run.table(cond["in_table"])
    if "not_in_table" in cond:
        return value not in run.table(cond["not_in_table"])
    if "equals" in cond:
        return value == str(cond["equals"]).upper()
    if "present" in cond:
        return bool(value) == bool(cond["present"])
    if "later_than" in cond:
        return _later_day(value, run.first_value(cond["later_than"], seg))
    raise ValueError(f"resources.yaml: bad when condition {cond!r}")


def _later_day(value: str, reference: str) -> bool:
    """Whether HL7 date/time ``value`` falls on a later calendar day than ``reference``, at the
    precision both have (a PR1-5 of 202504 is later than an MSH-7 of 20250304...). Times and
    offsets are ignored: both are the sender's local wall-clock days."""
    n = min(len(value), len(reference), 8)
    if n < 4 or not (value[:n].isdigit() and reference[:n].isdigit()):
        return False
    return value[:n] > reference[:n]


_QR_ANSWER = {"String": "valueString", "DateTime": "valueDateTime"}


def _qr_items(run: _Run, obr: Segment) -> list[JSON]:
    """The OBX after an OBR (until the next OBR) → QuestionnaireResponse.item."""
    items: list[JSON] = []
    for seg in run.msg.segments[obr.position :]:  # positions are 1-based: the ones after
        if seg.name == "OBR":
            break
        if seg.name != "OBX" or seg.fields is None:
            continue
        code = run.value("OBX-3.1", seg)
        item: JSON = {"linkId": code or f"OBX-{seg.position}"}
        if run.value("OBX-3.2", seg):
            item["text"] = run.value("OBX-3.2", seg)
        run._segment, run._field = "OBX", "OBX-5"
        try:
            choice = dt.obx_value(
                run.repetitions(field_path("OBX-5"), seg), run.value("OBX-2.1", seg),
                (run.repetitions(field_path("OBX-6"), seg) or [[]])[0], run,
            )
        except dt.BadValue as bad:
            run.issue(bad.code, f"{bad} (questionnaire item {seg.position})", bad.severity)
            choice = None
        finally:
            run._segment, run._field = "OBR", None
        if choice is not None:
            if choice.suffix == "Quantity":
                qty = choice.value
                answer: JSON
                if set(qty) == {"value"}:
                    number = qty["value"]
                    answer = {"valueInteger" if isinstance(number, int) else "valueDecimal":
                              number}
                else:
                    answer = {"valueQuantity": qty}
            elif choice.suffix == "CodeableConcept":
                answer = {"valueCoding": choice.value.get("coding", [{}])[0]} \
                    if choice.value.get("coding") else {"valueString": choice.value["text"]}
            elif choice.suffix == "DateTime" and "T" not in choice.value:
                answer = {"valueDate": choice.value}
            else:
                answer = {_QR_ANSWER[choice.suffix]: choice.value}
            item["answer"] = [answer]
        items.append(item)
    return items


def _resource_id(run: _Run, spec: JSON, name: str, seg: Segment) -> str | None:
    for keys in (spec["id"], spec.get("id_fallback")):
        if not keys:
            continue
        values = [run.first_value(k, seg) for k in keys]
        if all(v for k, v in zip(keys, values, strict=True) if not str(k).startswith("@")):
            # id_name: hash as another mapping does, so a merged patient's MRG-1 gives the id
            # its PID-3 gave (the same patient).
            return dt.short_hash(spec.get("id_name", name), *values)
    return None


def _convert_resources(run: _Run, rule: MessageRule, msg_type: str) -> None:
    emitted: dict[tuple[str, str], int] = {}
    for name, spec in run.cfg.resources.items():
        rtype = spec.get("resourceType", name)
        if rule.resources is not None and name not in rule.resources:
            continue
        if spec.get("messages") and msg_type not in spec["messages"]:
            continue
        occurrences = run.msg.find(spec["segment"])
        if spec.get("occurs", "each") == "first":
            occurrences = occurrences[:1]
        for seg in occurrences:
            run._segment = seg.name
            where = f"{seg.name} (segment {seg.position})"
            if seg.fields is None:
                run.issue("hl7.not_converted", f"{name} from {where} not converted: the "
                          "segment could not be parsed")
                continue
            if spec.get("when") and not _condition(run, spec["when"], seg):
                continue
            rid = _resource_id(run, spec, name, seg)
            if rid is None:
                run.issue("hl7.no_identity", f"{name} from {where} not converted: no value "
                          f"for its id keys ({', '.join(spec['id'])})")
                continue
            if spec.get("occurs") == "first":
                run.ids[name] = rid
            run.produced[(name, seg.position)] = rid
            cond = spec.get("delete_when")
            if rtype in rule.delete or (
                cond and run.first_value(cond["field"], seg).upper() == str(cond["equals"]).upper()
            ):
                run.result.deleted.append((rtype, rid))
                continue
            resource: JSON = {"resourceType": rtype, "id": rid}
            run._resource = (rtype, rid)
            for element in spec["elements"]:
                _apply_rule(run, resource, element, seg)
            run._resource = None
            for path, value in rule.overrides.get(name, {}).items():
                if value is None:
                    _remove(resource, path)
                else:
                    _set(resource, path, value, False)
            # The same key twice in one message (a DG1 repeated per DFT financial group) is
            # one resource: the later segment wins, as a later message would.
            seen = emitted.get((rtype, rid))
            if seen is not None:
                run.result.resources[seen] = resource
            else:
                emitted[(rtype, rid)] = len(run.result.resources)
                run.result.resources.append(resource)
        run._segment = None


def _unsupported(header: MessageHeader) -> ConversionIssue:
    return ConversionIssue(
        "hl7.unsupported_message",
        f"MSH-9: message type {dt.printable(header.message_type)} is not converted "
        "(not in mappings/hl7v2/messages.yaml)",
        "MSH",
        "MSH-9",
    )


def convert_parsed(
    msg: ParsedMessage, *, source: str, tz: ZoneInfo, cfg: HL7Config | None = None
) -> ConversionResult:
    cfg = cfg or load_config()
    result = ConversionResult(source=source, header=msg.header)
    run = _Run(msg, cfg, tz, result)
    for p in msg.issues:
        result.errors.append(ConversionIssue(p.code, p.message, p.segment, p.field, p.severity))
    header = msg.header
    rule = cfg.messages.get(header.message_type)
    if rule is None:
        result.errors.append(_unsupported(header))
        return result
    extra_msh = [s.position for s in msg.segments if s.name == "MSH"][1:]
    if extra_msh:
        run.issue("hl7.multiple_messages", f"segment {extra_msh[0]} is a second MSH: the input "
                  "holds several messages (split it with adapters.hl7v2.files)", segment="MSH")
        return result
    try:
        dt.hl7_datetime(header.message_datetime, tz)
    except dt.BadValue as bad:
        run.issue(bad.code, str(bad), "warning", segment="MSH", fld="MSH-7")
    present = {s.name for s in msg.segments}
    for required in rule.required:
        if required not in present:
            run.issue("hl7.missing_segment",
                      f"{header.message_type} has no {required} segment (required; the "
                      "message may be truncated)", segment=required)
    _convert_resources(run, rule, header.message_type)
    result.resources.extend(run.extra.values())
    return result


def convert_message(
    raw: bytes | str, *, source: str, tz: ZoneInfo, cfg: HL7Config | None = None
) -> ConversionResult:
    """Convert one HL7 v2 message (bytes as received, or text) to FHIR R4 resources.

    ``source`` names where the message came from (file and index, listener), kept in the
    result for tracing. ``tz``: the site's time zone for date-times without an offset.
    """
    cfg = cfg or load_config()
    try:
        header = read_header(
            raw.encode("utf-8") if isinstance(raw, str) else raw,
            versions=cfg.versions, message_types=(), allowed_field_separators=cfg.field_separators,
        )
        if header.message_type not in cfg.messages:
            # Recognised from MSH-9 alone: a message type we do not convert is not parsed, so
            # its content (an unknown structure, a charset we cannot read) raises no errors.
            return ConversionResult(source=source, header=header, errors=[_unsupported(header)])
        msg = parse(raw, cfg=cfg)
    except HeaderCheckError as exc:
        err = exc.error
        return ConversionResult(
            source=source,
            header=err.header,
            errors=[ConversionIssue(err.code, err.message, "MSH", err.field)],
        )
    except HL7ParseError as exc:
        i = exc.issue
        return ConversionResult(
            source=source, errors=[ConversionIssue(i.code, i.message, i.segment, i.field)]
        )
    return convert_parsed(msg, source=source, tz=tz, cfg=cfg)
