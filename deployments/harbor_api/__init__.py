"""Harbor's replication REST API (``/api/v2.0``), served by ``regflow serve`` on its HTTP
listener, so scripts, CI jobs and Terraform written for Harbor drive regflow unchanged.

The API is a view of the store: every change goes through the same ``Store`` functions and
validation as ``regflow apply`` and ``regflow policy delete``, and serve's deployment sync carries
it to Prefect. See docs/harbor-api.md for what is served and what is not.
"""

from deployments.harbor_api.app import API_PREFIX, create_harbor_api
from deployments.harbor_api.auth import ADMIN_PASSWORD_ENV, ADMIN_USER, admin_password

__all__ = ["ADMIN_PASSWORD_ENV", "ADMIN_USER", "API_PREFIX", "admin_password", "create_harbor_api"]
