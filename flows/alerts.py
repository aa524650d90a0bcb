"""Alerts as Prefect events, and the automation that turns them into webhook calls.

Every alert condition becomes one Prefect event named ``moe.alert.<kind>`` about the
store (resource ``moe.store.<absolute path>``), with the human message and the numbers in
its payload:

* ``moe.alert.realised-error``: realised MAPE above the threshold for the last N runs;
* ``moe.alert.error-growth``: realised MAPE of the last week > (1 + growth) x the week before;
* ``moe.alert.retrain-failed``: the retrain flow failed (a flow ``on_failure`` hook);
* ``moe.alert.not-promoted``: the retrain kept the old champion (the reason says why).

Events show in the UI's event feed whether or not anything listens. ``setup_webhook``
(``moe alerts webhook URL``) saves a ``CustomWebhookNotificationBlock`` and an automation
that sends one notification per ``moe.alert.*`` event: Slack-style webhooks, a pager's
HTTP endpoint, or any service that takes a JSON POST.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect.events import emit_event

from storage.objectstore import is_object_location

__all__ = [
    "ALERT_PREFIX",
    "ALERT_KINDS",
    "emit_alert",
    "resource_for",
    "setup_webhook",
]

ALERT_PREFIX = "moe.alert."
ALERT_KINDS = ("realised-error", "error-growth", "retrain-failed", "not-promoted")


def resource_for(store_root: str | Path) -> dict[str, str]:
    """The Prefect resource an alert is about: the store (a folder, or an ``s3://`` URL)."""
    root = str(store_root)
    if not is_object_location(root):
        root = str(Path(root).resolve())
    return {"prefect.resource.id": f"moe.store.{root}", "prefect.resource.name": root}


def emit_alert(kind: str, store_root: str | Path, message: str, **details: Any) -> None:
    """Emit ``moe.alert.<kind>`` with ``message`` and ``details`` in the payload."""
    if kind not in ALERT_KINDS:
        raise ValueError(f"unknown alert kind {kind!r}; one of {ALERT_KINDS}")
    emit_event(
        event=ALERT_PREFIX + kind,
        resource=resource_for(store_root),
        payload={"message": message, **details},
    )


def setup_webhook(url: str, name: str = "moe-alerts") -> str:
    """Save a webhook notification block and an automation on ``moe.alert.*``; its id.

    Needs a Prefect server (``PREFECT_API_URL``): automations run in the server. Saving
    again under the same ``name`` replaces the block and adds no second automation.
    """
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=name,
        url=url,
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        headers={"Content-Type": "application/json"},
        cookies=None,
    )
    block_id = cast(UUID, block.save(name, overwrite=True))  # sync call: a UUID
    _delete_automations(name)
    automation = Automation(
        name=name,
        description="moe-forecast alerts (moe.alert.*) to a webhook",
        trigger=EventTrigger(
            expect={ALERT_PREFIX + "*"}, posture=Posture.Reactive, threshold=1, within=timedelta(0)
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="{{ event.event }}",
                body="{{ event.payload.message }}",
            )
        ],
    ).create()
    return str(cast(Automation, automation).id)  # sync call: the created automation


def _delete_automations(name: str) -> None:
    """Delete every automation called ``name`` (a rerun of the setup replaces, never adds)."""
    from prefect.automations import Automation

    while True:
        try:
            existing = cast(Automation, Automation.read(name=name))  # sync call
        except ValueError:  # Prefect's "not found"
            return
        existing.delete()
