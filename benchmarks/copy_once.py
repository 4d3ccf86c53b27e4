"""Copy one repository's tags with regflow's transfer, in a process of its own, so that its
peak RSS can be read by the parent (``getrusage(RUSAGE_CHILDREN)``).

    python -m benchmarks.copy_once SRC_URL DST_URL REPOSITORY TAG [TAG ...]
"""

from __future__ import annotations

import asyncio
import sys

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TransferSpec
from tasks.transfer import transfer_repository


async def main(src: str, dst: str, repository: str, tags: list[str]) -> int:
    async with DistributionClient(Endpoint(url=src)) as source, \
            DistributionClient(Endpoint(url=dst)) as target:
        spec = TransferSpec(source_repository=repository, target_repository=repository,
                            tags=[TagPlan(tag=t) for t in tags])
        result = await transfer_repository(source, target, spec, BlobCopier(source, target))
    print(result.model_dump_json())
    return 0 if result.status == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])))
