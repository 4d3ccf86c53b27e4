"""Harbor's JSON shapes (swagger definitions ``Registry``, ``RegistryUpdate``, ``RegistryPing``,
``ReplicationPolicy``, ``ReplicationExecution``, ``ReplicationTask`` and their parts), as pydantic models.

Request models take what Harbor clients send and ignore fields Harbor adds that mean nothing
here; regflow's own policy fields ride along as extras (``Policy`` validates them). Response
models leave out what is unset, as Harbor does with its omitempty fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

# What Harbor shows in place of every secret it holds.
SECRET_MASK: Final = "*****"


class _In(BaseModel):
    # Harbor clients send read-only fields back (id, status, creation_time): ignored.
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class CredentialIn(_In):
    type: str | None = None
    access_key: str | None = None
    access_secret: str | None = None


class RegistryIn(_In):
    """``POST /registries`` (``Registry``), plus regflow's ``options`` and ``webhook``."""

    name: str | None = None
    description: str | None = None
    type: str | None = None
    url: str | None = None
    credential: CredentialIn | None = None
    insecure: bool | None = None
    ca_certificate: str | None = None
    options: dict[str, Any] | None = None
    webhook: dict[str, Any] | None = None


class RegistryUpdate(_In):
    """``PUT /registries/{id}``: every field optional, absent means unchanged."""

    name: str | None = None
    description: str | None = None
    url: str | None = None
    credential_type: str | None = None
    access_key: str | None = None
    access_secret: str | None = None
    insecure: bool | None = None
    ca_certificate: str | None = None


class RegistryPing(RegistryUpdate):
    """``POST /registries/ping``: a stored registry (``id``), a new one, or a stored one with
    some fields changed."""

    id: int | None = None
    type: str | None = None


class RegistryRef(_In):
    """A policy's side: Harbor clients send the whole registry or just ``{"id": N}``."""

    id: int | None = None


class FilterIn(_In):
    type: str | None = None
    # A string, or a list of label names for label filters.
    value: Any = None
    decoration: str | None = None


class TriggerSettingsIn(_In):
    cron: str | None = None
    interval_seconds: int | None = None


class TriggerIn(_In):
    type: str | None = None
    trigger_settings: TriggerSettingsIn | None = None


class PolicyIn(BaseModel):
    """``ReplicationPolicy`` as posted; extra keys are regflow's own policy fields."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    # Read-only in Harbor, sent back by clients that GET then PUT: taken and ignored.
    id: Any = None
    creation_time: Any = None
    update_time: Any = None
    name: str | None = None
    description: str | None = None
    src_registry: RegistryRef | None = None
    dest_registry: RegistryRef | None = None
    dest_namespace: str | None = None
    dest_namespace_replace_count: int | None = None
    trigger: TriggerIn | None = None
    filters: list[FilterIn] | None = None
    replicate_deletion: bool | None = None
    deletion: bool | None = None
    override: bool | None = None
    enabled: bool | None = None
    speed: int | None = None
    copy_by_chunk: bool | None = None
    single_active_replication: bool | None = None


class CredentialOut(_Out):
    type: str
    access_key: str
    access_secret: str = SECRET_MASK


class RegistryOut(_Out):
    id: int
    name: str
    description: str
    type: str
    url: str
    insecure: bool
    ca_certificate: str | None = None
    credential: CredentialOut | None = None
    # Harbor's periodic health check fills this; regflow checks on demand (POST /registries/ping).
    status: str = "unknown"
    creation_time: datetime
    update_time: datetime


class FilterOut(_Out):
    type: str
    value: str | list[str]
    decoration: str


class TriggerOut(_Out):
    type: str
    trigger_settings: dict[str, Any]


class PolicyOut(_Out):
    id: int
    name: str
    description: str
    src_registry: RegistryOut
    dest_registry: RegistryOut
    dest_namespace: str
    dest_namespace_replace_count: int
    trigger: TriggerOut
    filters: list[FilterOut]
    replicate_deletion: bool
    deletion: bool
    override: bool
    enabled: bool
    speed: int
    copy_by_chunk: bool
    single_active_replication: bool
    creation_time: datetime
    update_time: datetime


class FilterStyle(_Out):
    type: str
    style: str
    values: list[str] = Field(default_factory=list)


class RegistryInfo(_Out):
    type: str
    description: str
    supported_resource_filters: list[FilterStyle]
    supported_triggers: list[str]
    supported_copy_by_chunk: bool


class StartExecution(_In):
    """``POST /replication/executions`` (``StartReplicationExecution``)."""

    policy_id: int | None = None


class ExecutionOut(_Out):
    """``ReplicationExecution``: status, status_text and the counts are always sent."""

    id: int
    policy_id: int | None = None
    status: str
    status_text: str
    trigger: str
    start_time: datetime | None = None
    end_time: datetime | None = None
    total: int
    failed: int
    succeed: int
    in_progress: int
    stopped: int


class TaskOut(_Out):
    """``ReplicationTask``: one source repository of an execution."""

    id: int
    execution_id: int
    status: str
    job_id: str
    operation: str
    resource_type: str
    src_resource: str
    dst_resource: str
    start_time: datetime | None = None
    end_time: datetime | None = None


class ErrorItem(BaseModel):
    code: str
    message: str


class Errors(BaseModel):
    errors: list[ErrorItem]
