"""Reminders as a CommunicationRequest (or Task) on the hospital's FHIR server.

The resource carries the idempotency key as an identifier and is created conditionally
(``If-None-Exist: identifier=<system>|<key>``), so a resend after a crash finds the first
one instead of creating a second. The server can also be asked (search by identifier), so
this channel confirms pending sends exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import requests

from adapters.http import FhirHttpError, raise_for_fhir
from scheduler.channels.base import ChannelError, Message, Templates, http_session
from scheduler.clock import Clock, SystemClock
from scheduler.settings import RemindersSettings


class FhirChannel:
    name: ClassVar[str] = "fhir"
    can_confirm: ClassVar[bool] = True

    def __init__(self, settings: RemindersSettings, templates: Templates, clock: Clock | None = None) -> None:
        self.cfg = settings.fhir
        self.templates = templates
        self.clock = clock or SystemClock()
        self.http_cfg, self.session = http_session(self.cfg)
        self.session.headers["Accept"] = "application/fhir+json"
        token = self.cfg.token()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.base = (self.cfg.base_url or "").rstrip("/")

    def can_reach(self, msg: Message) -> bool:
        return True

    def _identifier(self, msg: Message) -> str:
        return f"{self.cfg.identifier_system}|{msg.external_id}"

    def resource(self, msg: Message) -> dict[str, Any]:
        text = self.templates.render("fhir.txt.j2", msg)
        identifier = [{"system": self.cfg.identifier_system, "value": msg.external_id}]
        authored = self.clock.now().isoformat(timespec="seconds")
        patient = {"reference": f"Patient/{msg.patient_id}"}
        procedure = {"reference": f"Procedure/{msg.procedure_id}"}
        if self.cfg.resource == "Task":
            return {
                "resourceType": "Task",
                "identifier": identifier,
                "status": "requested",
                "intent": "order",
                "priority": "routine",
                "description": text,
                "for": patient,
                "focus": procedure,
                "authoredOn": authored,
                "restriction": {"period": {"end": msg.window_end.isoformat()}},
            }
        return {
            "resourceType": "CommunicationRequest",
            "identifier": identifier,
            "status": "active",
            "subject": patient,
            "about": [procedure],
            "payload": [{"contentString": text}],
            "occurrencePeriod": {"start": msg.due_date.isoformat(), "end": msg.window_end.isoformat()},
            "authoredOn": authored,
        }

    def send(self, msg: Message) -> str:
        url = f"{self.base}/{self.cfg.resource}"
        headers = {
            "Content-Type": "application/fhir+json",
            "If-None-Exist": f"identifier={self._identifier(msg)}",
        }
        try:
            resp = self.session.post(
                url, json=self.resource(msg), headers=headers, timeout=self.http_cfg.timeout
            )
            raise_for_fhir(resp)
        except FhirHttpError as exc:
            raise ChannelError(str(exc)) from None
        except requests.RequestException as exc:
            raise ChannelError(f"FHIR {type(exc).__name__}") from None
        try:
            created = resp.json()
        except ValueError:
            created = {}
        rid = created.get("id") if isinstance(created, dict) else None
        location = resp.headers.get("Location") or resp.headers.get("Content-Location") or ""
        return str(rid or location or msg.external_id)[:256]

    def confirm(self, msg: Message) -> str | None:
        url = f"{self.base}/{self.cfg.resource}"
        try:
            resp = self.session.get(
                url, params={"identifier": self._identifier(msg)}, timeout=self.http_cfg.timeout
            )
            raise_for_fhir(resp)
            bundle = resp.json()
        except FhirHttpError as exc:
            raise ChannelError(str(exc)) from None
        except (requests.RequestException, ValueError) as exc:
            raise ChannelError(f"FHIR {type(exc).__name__}") from None
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == self.cfg.resource and resource.get("id"):
                return str(resource["id"])
        return None
