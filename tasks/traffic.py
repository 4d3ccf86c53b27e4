"""An execution's traffic (tasks.models.Traffic) from the counters its clients and blob copier
kept while it ran: read once, at its end."""

from __future__ import annotations

from adapters.distribution.client import DistributionClient
from tasks.blobs import BlobCopier
from tasks.models import RegistryTraffic, Traffic


def registry_traffic(client: DistributionClient) -> RegistryTraffic:
    return RegistryTraffic(host=client.host, responses=dict(client.responses), holds=client.holds)


def traffic_of(source: DistributionClient, target: DistributionClient, blobs: BlobCopier) -> Traffic:
    return Traffic(blobs_uploaded=blobs.blobs_uploaded, blobs_mounted=blobs.blobs_mounted,
                   registries={"source": registry_traffic(source), "target": registry_traffic(target)})
