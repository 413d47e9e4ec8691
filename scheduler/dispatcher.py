"""Reminder dispatch: send what is due, at least once toward the channel, never twice by us.

Each send has an idempotency key (case, time point, attempt, channel; unique in
``reminder_sends``). The protocol, in this order:

1. claim: one transaction raises ``reminders.attempts`` to n (only if it is still n-1) and
   inserts one ``pending`` send row per chosen channel; COMMIT;
2. deliver on the channel, handing it the key's digest (SMTP Message-ID, webhook
   ``Idempotency-Key``, FHIR identifier + ``If-None-Exist``);
3. record: the send row becomes ``sent`` (channel id, time) and the reminder's
   ``last_sent_at`` moves; COMMIT.

A crash between 1 and 3 leaves a ``pending`` row with no error (``tries`` 1). The next
dispatch settles such rows before anything new (the dispatch lock guarantees no other
dispatcher is still working on them; a dead holder's lease is taken over at once on its
host, or once it is not renewed for ``scheduler.lock_ttl_seconds`` elsewhere):

- a channel that can confirm (FHIR: search by the identifier; worklist) is asked, and the
  message is sent only if it did not arrive: exactly once;
- a channel that cannot (SMTP, webhook) follows ``reminders.unconfirmed`` for that channel.
  ``assume_sent`` (email's default: SMTP has no de-duplication) records it as sent without
  resending, with provider id ``unconfirmed``: never a duplicate, but an attempt claimed and
  not delivered before the crash is lost, so the reminder is flagged ``unconfirmed`` in
  ``reminders list`` and on the coordinator worklist for someone to check. ``resend`` (the
  webhook's default: gateways that honour ``Idempotency-Key`` turn it into a no-op) delivers
  again with the same key, so each crash after delivery can give one duplicate toward the
  channel, carrying the same SMTP Message-ID / webhook key; a crash before delivery loses
  nothing.

We never create a second attempt for the same key (unique ``idempotency_key``, and the claim
only moves ``attempts`` from n-1 to n): a duplicate can only come from a crash as above, or
from retrying an error after which the receiver had in fact accepted the message (a timeout
on the answer), and it always carries the same key.

Failures (ChannelError) stay ``pending`` with the error and are retried, as the same attempt
and with the same key, by later runs after 1, 3, 7, ... x ``retry_backoff_minutes`` (measured
from the claim), then become ``failed`` and surface in ``reminders.last_error`` (and on the
coordinator worklist).

Outages (SMTP server or gateway down for days) must not pile up reminders that all go out in
the same minute when it comes back, so:

- no new attempt is claimed for a time point while one of its sends is still pending: the
  failing attempt is retried instead, and the next one follows the schedule counted from the
  last attempt actually sent (the planner's ``next_attempt_on``);
- a time point gets at most one message per site-local day: once an attempt went out today,
  neither a retry of another attempt nor a new one is sent before tomorrow (the channels of
  one attempt, ``channel_mode: all``, still go out together);
- of several pending attempts of one time point on one channel (a backlog claimed by an
  older version during an outage) only the newest is sent; the older ones are cancelled.

Quiet hours stop all sending; the daily cap limits attempts started per site-local day.
Only one dispatcher runs at a time per database (the ``reminders`` job lock). The lease is
renewed before each send; when renewing fails (the lease lapsed and another process took it)
the run stops at once (``lock_lost``), since that process may now settle our pending sends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.engine import Connection

from registry_adapter.app import App
from registry_store import reminders
from registry_store.leases import LeaseLock, job_lock
from registry_store.tables import CASES, PATIENTS, REMINDER_SENDS, REMINDERS
from scheduler.channels import build_channels
from scheduler.channels.base import (
    Channel,
    ChannelError,
    Message,
    build_link,
    idempotency_key,
    redact_contact,
)
from scheduler.clock import Clock, SystemClock, local_day_bounds, local_now
from scheduler.planner import ACTIVE, PlanCounts, next_attempt_on, plan_reminders
from scheduler.queries import UNCONFIRMED, due_now, rolled_back, sendable, with_case_and_patient
from scheduler.settings import RemindersSettings, SchedulerSettings

log = structlog.get_logger(__name__)

LOCK_NAME = "reminders"
# What :meth:`Dispatcher._message` reads from a row: the reminder, its case and contact.
MESSAGE_COLUMNS = (
    REMINDERS,
    CASES.c.source,
    CASES.c.procedure_id,
    CASES.c.patient_id,
    PATIENTS.c.email,
    PATIENTS.c.phone,
)


def no_send_in_flight() -> ColumnElement[bool]:
    """The reminder has no pending send: a failing attempt is retried, never overtaken."""
    return ~exists().where(
        REMINDER_SENDS.c.reminder_id == REMINDERS.c.id, REMINDER_SENDS.c.status == "pending"
    )


class SentToday:
    """Which attempt of each time point went out today (site-local day): at most one per day."""

    def __init__(self, conn: Connection, today: date, tz: ZoneInfo) -> None:
        start, end = local_day_bounds(today, tz)
        self._attempts: dict[int, int] = {
            r.reminder_id: r.attempt
            for r in conn.execute(
                select(REMINDER_SENDS.c.reminder_id, REMINDER_SENDS.c.attempt)
                .where(
                    REMINDER_SENDS.c.status == "sent",
                    REMINDER_SENDS.c.sent_at >= start,
                    REMINDER_SENDS.c.sent_at < end,
                )
                .order_by(REMINDER_SENDS.c.sent_at)
            )
        }

    def allows(self, reminder_id: int, attempt: int) -> bool:
        """Nothing went out today for this time point, or only this attempt (on another channel)."""
        return self._attempts.get(reminder_id, attempt) == attempt

    def add(self, reminder_id: int, attempt: int) -> None:
        self._attempts[reminder_id] = attempt


@dataclass
class DispatchReport:
    as_of: str
    planned: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    quiet_hours: bool = False
    locked: bool = False
    # The dispatch lease was lost mid-run (another process took it over): the run stopped.
    lock_lost: bool = False
    settled: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    unreachable: int = 0
    capped: int = 0
    # Due, but this time point already got a message today (one per site-local day).
    held_today: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class Dispatcher:
    def __init__(
        self, app: App, clock: Clock | None = None, channels: dict[str, Channel] | None = None
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.rs = app.settings.section(RemindersSettings)
        self.tz = app.settings.site.tz
        self.clock = clock or SystemClock()
        self._channels = channels

    @property
    def channels(self) -> dict[str, Channel]:
        if self._channels is None:
            self._channels = build_channels(self.rs, self.clock)
        return self._channels

    def today(self) -> date:
        return local_now(self.clock, self.tz).date()

    # -- planning -------------------------------------------------------------------------

    def plan(self, *, dry_run: bool = False) -> PlanCounts:
        """Plan every case's time points; ``dry_run`` counts what would change and saves nothing."""
        if dry_run:
            with rolled_back(self.app.engine) as conn:
                return plan_reminders(conn, self.settings, self.today())
        with self.app.engine.begin() as conn:
            counts = plan_reminders(conn, self.settings, self.today())
        log.info("reminders.planned", **{k: v for k, v in counts.as_dict().items() if k != "by_status"})
        return counts

    # -- dispatch -------------------------------------------------------------------------

    def run(self, *, dry_run: bool = False, case_id: str | None = None) -> DispatchReport:
        """Plan, then send everything due (or, with ``case_id``, that case's next attempts now)."""
        now = self.clock.now()
        today = self.today()
        report = DispatchReport(
            as_of=local_now(self.clock, self.tz).isoformat(timespec="minutes"), dry_run=dry_run
        )
        if dry_run:
            with rolled_back(self.app.engine) as conn:
                report.planned = plan_reminders(conn, self.settings, today).as_dict()
                sent_today = SentToday(conn, today, self.tz)
                candidates = self._due(conn, today, case_id)
                due = [r for r in candidates if sent_today.allows(r.id, r.attempts + 1)]
                report.held_today = len(candidates) - len(due)
                report.capped = max(0, len(due) - self._cap_left(conn, today))
                report.items = [self._describe(r, self._pick(r)[1]) for r in due[: len(due) - report.capped]]
            report.quiet_hours = self._quiet(now)
            return report
        with job_lock(
            self.app.engine, LOCK_NAME, self.settings.section(SchedulerSettings).lock_ttl_seconds, self.clock
        ) as lock:
            if lock is None:
                report.locked = True
                log.info("reminders.dispatch_skipped", reason="another dispatcher holds the lock")
                return report
            report.planned = self.plan().as_dict()
            if not self.rs.enabled:
                log.info("reminders.disabled")
                return report
            if self._quiet(now) and case_id is None:
                report.quiet_hours = True
                return report
            with self.app.engine.connect() as conn:
                sent_today = SentToday(conn, today, self.tz)
            if self._settle_pending(now, report, lock, sent_today):
                with self.app.engine.connect() as conn:
                    due = self._due(conn, today, case_id)
                    left = self._cap_left(conn, today)
                # A new attempt differs from any sent today: held until tomorrow.
                allowed = [r for r in due if sent_today.allows(r.id, r.attempts + 1)]
                report.held_today += len(due) - len(allowed)
                due = allowed
                report.capped = max(0, len(due) - left)
                for row in due[:left]:
                    if not self._still_ours(lock, report):
                        break
                    self._attempt(row, now, today, report)
                    sent_today.add(row.id, row.attempts + 1)
        log.info(
            "reminders.dispatched",
            sent=report.sent,
            settled=report.settled,
            retrying=report.retrying,
            failed=report.failed,
            unreachable=report.unreachable,
            capped=report.capped,
            held_today=report.held_today,
            lock_lost=report.lock_lost,
        )
        return report

    def _still_ours(self, lock: LeaseLock, report: DispatchReport) -> bool:
        """Renew the dispatch lease before the next send; False (and stop) once it is lost."""
        if lock.renew():
            return True
        report.lock_lost = True
        log.error("reminders.dispatch_stopped", reason="dispatch lock lost to another process")
        return False

    def _quiet(self, now: datetime) -> bool:
        quiet = self.rs.quiet_hours
        return quiet is not None and quiet.contains(now.astimezone(self.tz).time())

    def _cap_left(self, conn: Connection, today: date) -> int:
        start, end = local_day_bounds(today, self.tz)
        started = (
            select(REMINDER_SENDS.c.reminder_id, REMINDER_SENDS.c.attempt)
            .where(REMINDER_SENDS.c.created_at >= start, REMINDER_SENDS.c.created_at < end)
            .distinct()
            .subquery()
        )
        used = int(conn.execute(select(func.count()).select_from(started)).scalar_one())
        return max(0, self.rs.daily_cap - used)

    def _due(self, conn: Connection, today: date, case_id: str | None) -> list[Any]:
        if case_id is None:
            conditions = [*due_now(today, self.rs.max_attempts), no_send_in_flight()]
        else:
            conditions = [
                *sendable(today, self.rs.max_attempts),
                no_send_in_flight(),
                REMINDERS.c.case_id == case_id,
            ]
        query = (
            select(*MESSAGE_COLUMNS)
            .select_from(with_case_and_patient())
            .where(*conditions)
            .order_by(REMINDERS.c.next_attempt_on, REMINDERS.c.id)
        )
        return list(conn.execute(query))

    def _message(self, row: Any, attempt: int, channel: str) -> Message:
        return Message(
            idempotency_key=idempotency_key(row.case_id, row.timepoint, attempt, channel),
            reminder_id=row.id,
            case_id=row.case_id,
            source=row.source,
            procedure_id=row.procedure_id,
            patient_id=row.patient_id,
            timepoint=row.timepoint,
            timepoint_label=self.rs.timepoint_labels.get(row.timepoint, row.timepoint),
            attempt=attempt,
            due_date=row.due_date,
            window_end=row.window_end,
            link=build_link(self.rs, row.id, attempt),
            email=row.email,
            phone=row.phone,
        )

    def _pick(self, row: Any) -> tuple[int, list[tuple[Channel, Message]]]:
        attempt = row.attempts + 1
        picked = []
        for name, channel in self.channels.items():
            msg = self._message(row, attempt, name)
            if channel.can_reach(msg):
                picked.append((channel, msg))
                if self.rs.channel_mode == "first":
                    break
        return attempt, picked

    def _describe(self, row: Any, picked: list[tuple[Channel, Message]]) -> dict[str, Any]:
        return {
            "reminder_id": row.id,
            "case_id": row.case_id,
            "procedure_id": row.procedure_id,
            "timepoint": row.timepoint,
            "attempt": row.attempts + 1,
            "due_date": row.due_date.isoformat(),
            "channels": [c.name for c, _ in picked],
        }

    def _attempt(self, row: Any, now: datetime, today: date, report: DispatchReport) -> None:
        attempt, picked = self._pick(row)
        nxt = next_attempt_on(
            due=row.due_date,
            window_start=row.window_start,
            window_end=row.window_end,
            attempts=attempt,
            last_sent_day=today,
            first_days_before=self.rs.first_reminder_days_before,
            every_days=self.rs.repeat_every_days,
            max_attempts=self.rs.max_attempts,
        )
        values: dict[str, Any] = {"attempts": attempt, "next_attempt_on": nxt, "updated_at": now}
        if picked:
            values["channel"] = ",".join(c.name for c, _ in picked)[:32]
        else:
            # Counted as an attempt so the schedule moves on; the worklist shows it for a call.
            values["last_error"] = f"unreachable: no contact for {', '.join(self.channels)}"
        send_ids: list[int] = []
        with self.app.engine.begin() as conn:
            if not reminders.claim_reminder(conn, row.id, row.attempts, values):
                return  # another dispatcher claimed it first
            for channel, msg in picked:
                send_ids.append(
                    reminders.record_send(
                        conn,
                        reminder_id=row.id,
                        attempt=attempt,
                        channel=channel.name,
                        idempotency_key=msg.idempotency_key,
                        created_at=now,
                    )
                )
        if not picked:
            report.unreachable += 1
            log.warning("reminders.unreachable", reminder_id=row.id, timepoint=row.timepoint, attempt=attempt)
            return
        for send_id, (channel, msg) in zip(send_ids, picked, strict=True):
            self._deliver(send_id, 1, channel, msg, now, report, confirm_first=False)
            report.items.append({**self._describe(row, [(channel, msg)]), "send_id": send_id})

    def _deliver(
        self,
        send_id: int,
        tries: int,
        channel: Channel,
        msg: Message,
        now: datetime,
        report: DispatchReport,
        *,
        confirm_first: bool,
    ) -> bool:
        """Deliver (or confirm) one send and record the outcome; True when it is sent."""
        provider: str | None = None
        error: str | None = None
        try:
            if confirm_first and channel.can_confirm:
                provider = channel.confirm(msg)
            elif confirm_first and self.rs.unconfirmed_policy(channel.name) == "assume_sent":
                provider = UNCONFIRMED
            if provider is None:
                provider = channel.send(msg)
        except ChannelError as exc:
            error = redact_contact(str(exc), msg)
        except Exception as exc:  # a bug or library error: keep the type, never the text (PHI)
            error = f"{type(exc).__name__} in channel {channel.name}"
            log.error(
                "reminders.channel_bug", channel=channel.name, send_id=send_id, error=type(exc).__name__
            )
        with self.app.engine.begin() as conn:
            if error is None:
                reminders.record_sent(conn, send_id, msg.reminder_id, now, provider)
                report.sent += 1
                log.info(
                    "reminders.sent",
                    send_id=send_id,
                    channel=channel.name,
                    attempt=msg.attempt,
                    timepoint=msg.timepoint,
                    reminder_id=msg.reminder_id,
                )
                return True
            give_up = tries >= self.rs.max_tries
            reminders.record_send_failure(
                conn, send_id, msg.reminder_id, now, error, channel=channel.name, give_up=give_up
            )
            if give_up:
                report.failed += 1
            else:
                report.retrying += 1
        log.warning(
            "reminders.send_failed",
            send_id=send_id,
            channel=channel.name,
            tries=tries,
            gave_up=give_up,
            error=error,
        )
        return False

    def _settle_pending(
        self, now: datetime, report: DispatchReport, lock: LeaseLock, sent_today: SentToday
    ) -> bool:
        """Finish sends a crashed run left pending, and retry failed ones whose backoff is over.

        False when the lease was lost on the way (the run must stop)."""
        backoff = timedelta(minutes=self.rs.retry_backoff_minutes)
        with self.app.engine.connect() as conn:
            rows = list(
                conn.execute(
                    select(
                        REMINDER_SENDS.c.id.label("send_id"),
                        REMINDER_SENDS.c.channel.label("send_channel"),
                        REMINDER_SENDS.c.attempt.label("send_attempt"),
                        REMINDER_SENDS.c.tries,
                        REMINDER_SENDS.c.error,
                        REMINDER_SENDS.c.created_at.label("send_created_at"),
                        *MESSAGE_COLUMNS,
                    )
                    .select_from(
                        with_case_and_patient(
                            REMINDER_SENDS.join(REMINDERS, REMINDERS.c.id == REMINDER_SENDS.c.reminder_id)
                        )
                    )
                    .where(REMINDER_SENDS.c.status == "pending")
                    .order_by(REMINDER_SENDS.c.id)
                )
            )
        newest: dict[tuple[int, str], int] = {}
        for row in rows:
            key = (row.id, row.send_channel)
            newest[key] = max(newest.get(key, 0), row.send_attempt)
        for row in rows:
            superseded = row.send_attempt < newest[(row.id, row.send_channel)]
            crashed = row.error is None
            if not superseded and not crashed:
                if now < _aware(row.send_created_at) + backoff * (2**row.tries - 1):
                    continue
                if not sent_today.allows(row.id, row.send_attempt):
                    report.held_today += 1
                    continue
            if not self._still_ours(lock, report):
                return False
            channel = self.channels.get(row.send_channel)
            msg = self._message(row, row.send_attempt, row.send_channel)
            if superseded or channel is None or row.status not in ACTIVE:
                if superseded:
                    why = f"superseded by attempt {newest[(row.id, row.send_channel)]}"
                elif channel is None:
                    why = "channel no longer configured"
                else:
                    why = f"time point {row.status} meanwhile"
                with self.app.engine.begin() as conn:
                    reminders.cancel_send(conn, row.send_id, why)
                report.settled += 1
                continue
            with self.app.engine.begin() as conn:
                reminders.count_send_try(conn, row.send_id, row.tries + 1)
            log.info("reminders.settling", send_id=row.send_id, channel=channel.name, crashed=crashed)
            if self._deliver(row.send_id, row.tries + 1, channel, msg, now, report, confirm_first=crashed):
                sent_today.add(row.id, row.send_attempt)
            report.settled += 1
        return True
