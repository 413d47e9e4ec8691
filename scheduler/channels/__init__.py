"""Reminder channels: email (SMTP), webhook (SMS gateways), FHIR CommunicationRequest/Task,
and the coordinator worklist."""

from __future__ import annotations

from scheduler.channels.base import Channel, Templates
from scheduler.clock import Clock, SystemClock
from scheduler.settings import RemindersSettings


def build_channels(settings: RemindersSettings, clock: Clock | None = None) -> dict[str, Channel]:
    """The configured channels, in the configured order. ``clock`` stamps what they send
    (email Date, FHIR authoredOn) with the dispatcher's time, which ``--as-of`` and tests set."""
    from scheduler.channels.email import EmailChannel
    from scheduler.channels.fhir import FhirChannel
    from scheduler.channels.webhook import WebhookChannel
    from scheduler.channels.worklist import WorklistChannel

    templates = Templates(settings)
    clock = clock or SystemClock()
    out: dict[str, Channel] = {}
    for name in settings.channels:
        if name == "email":
            out[name] = EmailChannel(settings, templates, clock)
        elif name == "webhook":
            out[name] = WebhookChannel(settings, templates)
        elif name == "fhir":
            out[name] = FhirChannel(settings, templates, clock)
        else:
            out[name] = WorklistChannel()
    return out
