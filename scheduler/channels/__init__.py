"""Reminder channels: email (SMTP), webhook (SMS gateways), FHIR CommunicationRequest/Task,
and the coordinator worklist."""

from __future__ import annotations

from scheduler.channels.base import Channel, Templates
from scheduler.settings import RemindersSettings


def build_channels(settings: RemindersSettings) -> dict[str, Channel]:
    """The configured channels, in the configured order."""
    from scheduler.channels.email import EmailChannel
    from scheduler.channels.fhir import FhirChannel
    from scheduler.channels.webhook import WebhookChannel
    from scheduler.channels.worklist import WorklistChannel

    templates = Templates(settings)
    out: dict[str, Channel] = {}
    for name in settings.channels:
        if name == "email":
            out[name] = EmailChannel(settings, templates)
        elif name == "webhook":
            out[name] = WebhookChannel(settings, templates)
        elif name == "fhir":
            out[name] = FhirChannel(settings, templates)
        else:
            out[name] = WorklistChannel()
    return out
