"""Changing WEBHOOKS_SECRET_KEY: re-encrypt everything stored under older keys."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from webhooks.crypto import headers_associated, needs_reencryption, seal, unseal
from webhooks.db import session_scope
from webhooks.models import Subscription

# Each sealed column, and how its associated data follows from the subscription ID.
_COLUMNS = {
    "secret_ciphertext": lambda sid: sid,
    "previous_secret_ciphertext": lambda sid: sid,
    "headers_ciphertext": headers_associated,
}


@dataclass
class Rotation:
    subscriptions: int = 0
    rewritten: int = 0


def reencrypt_all(batch: int = 200) -> Rotation:
    """Re-encrypt every stored secret, signing key and custom headers under the current key.

    Each batch of rows is locked (FOR UPDATE) and committed on its own, so the API and the
    workers keep running: a rotate-secret or PATCH waits for its row's batch, never lost. Run
    again after an interruption, it goes on where it stopped (rows already under the current key
    are left alone). Raise ValueError for a value no configured key opens.
    """
    done = Rotation()
    last = None
    while True:
        with session_scope() as session:
            query = (
                select(Subscription)
                .order_by(Subscription.id)
                .limit(batch)
                .with_for_update(of=Subscription)
            )
            if last is not None:
                query = query.where(Subscription.id > last)
            rows = list(session.scalars(query))
            if not rows:
                return done
            for row in rows:
                sid = str(row.id).encode()
                changes: dict[str, bytes] = {}
                for column, associated in _COLUMNS.items():
                    blob = getattr(row, column)
                    if blob is not None and needs_reencryption(blob):
                        changes[column] = seal(unseal(blob, associated(sid)), associated(sid))
                if changes:
                    # Keep updated_at: the subscription itself did not change.
                    session.execute(
                        update(Subscription)
                        .where(Subscription.id == row.id)
                        .values(**changes, updated_at=Subscription.updated_at)
                    )
                    done.rewritten += len(changes)
            done.subscriptions += len(rows)
            last = rows[-1].id
