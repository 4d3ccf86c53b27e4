"""Which replication policies a registry event triggers.

The same filters as a full run (policies.filters), applied to the one repository and tag the
event names, so that an event run never copies what the scheduled run would have left out.
"""

from __future__ import annotations

from collections.abc import Iterable

from deployments.events import RegistryEvent
from policies.filters import select_repositories, select_tags
from policies.models import Policy


def matching_policies(event: RegistryEvent, policies: Iterable[Policy]) -> list[Policy]:
    """The enabled event-based policies copying from ``event.source`` whose filters pass it.

    Deletions trigger only policies with ``replicate_deletion``. A deletion known only by its
    digest has no tag to filter on, so tag filters do not hold it back. Label filters are not
    checked: an event carries no labels.
    """
    matched: list[Policy] = []
    for policy in policies:
        if not policy.enabled or policy.trigger.type != "event_based":
            continue
        if policy.src_registry != event.source:
            continue
        if event.action == "delete" and not policy.replicate_deletion:
            continue
        if not select_repositories([event.repository], policy.filters):
            continue
        if event.tag is not None and not select_tags([event.tag], policy.filters):
            continue
        matched.append(policy)
    return matched
