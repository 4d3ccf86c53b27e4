"""Between Harbor's shapes and regflow's Registry and Policy: what a Harbor client sends becomes
the dict ``regflow apply`` would read from a file, and stored items become Harbor's JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from adapters.errors import ConfigError
from deployments.harbor_api.errors import HarborError
from deployments.harbor_api.models import (
    SECRET_MASK,
    CredentialOut,
    FilterIn,
    FilterOut,
    PolicyIn,
    PolicyOut,
    RegistryIn,
    RegistryOut,
    RegistryUpdate,
    TriggerIn,
    TriggerOut,
)
from policies.filters import label_names
from policies.models import Policy, Registry
from policies.secrets import MASK

PEM_MARK: Final = "-----BEGIN"
# Harbor's fields that map one to one onto a regflow Policy's.
_POLICY_FIELDS: Final = ("name", "description", "dest_namespace", "dest_namespace_replace_count",
                         "override", "enabled", "copy_by_chunk", "single_active_replication")
# Harbor keeps 6-field crons (seconds first); regflow stores the 5-field form.
_SECONDS_FIELD: Final = "0 "


def _pem_only(value: str | None) -> str | None:
    # A path is read on the regflow host: fine in an admin's config file, not from a network caller.
    if value and value.strip() and PEM_MARK not in value:
        raise HarborError(400, "ca_certificate: give the PEM text of the CA certificate")
    return value


# ------------------------------------------------------------------------------ registries
def registry_spec(body: RegistryIn) -> dict[str, Any]:
    """A new registry as a config file's entry."""
    spec: dict[str, Any] = {k: v for k, v in body.model_dump(
        include={"name", "description", "type", "url", "insecure", "options", "webhook"}).items()
        if v is not None}
    spec["ca_certificate"] = _pem_only(body.ca_certificate)
    credential = body.credential
    if credential is not None and (credential.access_key or credential.access_secret):
        spec["credential"] = {"type": credential.type or "basic", "access_key": credential.access_key or "",
                              "access_secret": credential.access_secret or ""}
    return spec


def updated_registry_spec(stored: Registry, body: RegistryUpdate) -> dict[str, Any]:
    """``stored`` with what ``body`` changes; the masked secret sent back means unchanged."""
    spec = stored.model_dump(mode="json", exclude_none=True)
    # JSON dumps mask secrets: the stored (sealed or reference) text goes back as it is.
    if stored.credential is not None:
        spec["credential"]["access_secret"] = stored.credential.access_secret.get_secret_value()
    if stored.webhook is not None:
        spec["webhook"]["secret"] = stored.webhook.secret.get_secret_value()
    if body.name is not None and body.name != stored.name:
        raise HarborError(400, f"name: a registry cannot be renamed here (it is {stored.name!r}); "
                               "create one with the new name and point the policies at it")
    for field in ("description", "url", "insecure"):
        value = getattr(body, field)
        if value is not None:
            spec[field] = value
    if body.ca_certificate is not None:
        spec["ca_certificate"] = _pem_only(body.ca_certificate)
    if not spec.get("options"):
        spec.pop("options", None)
    credential = dict(spec.get("credential") or {})
    if body.credential_type is not None:
        credential["type"] = body.credential_type
    if body.access_key is not None:
        credential["access_key"] = body.access_key
    if body.access_secret is not None and body.access_secret not in (SECRET_MASK, MASK):
        credential["access_secret"] = body.access_secret
    if credential.get("access_key") or credential.get("access_secret"):
        spec["credential"] = credential
    else:
        spec.pop("credential", None)
    return spec


def registry_out(registry: Registry, number: int, times: tuple[datetime, datetime]) -> RegistryOut:
    credential = None
    if registry.credential is not None:
        credential = CredentialOut(type=registry.credential.type, access_key=registry.credential.access_key)
    extras: dict[str, Any] = {}
    if registry.options:
        extras["options"] = registry.options
    if registry.webhook is not None:
        extras["webhook"] = {"kind": registry.webhook.kind, "auth": registry.webhook.auth,
                             "secret": SECRET_MASK}
    return RegistryOut(id=number, name=registry.name, description=registry.description, type=registry.type,
                       url=registry.url, insecure=registry.insecure, ca_certificate=registry.ca_certificate,
                       credential=credential, creation_time=times[0], update_time=times[1], **extras)


# -------------------------------------------------------------------------------- policies
def _filter(item: FilterIn) -> dict[str, Any]:
    value = item.value
    if isinstance(value, list):
        # Harbor's label filter holds a list; regflow's a comma-separated text.
        value = ",".join(str(v) for v in value)
    elif value is None:
        value = ""
    elif not isinstance(value, str):
        value = str(value)
    out: dict[str, Any] = {"type": item.type, "value": value}
    if item.decoration:
        out["decoration"] = item.decoration
    return out


def _trigger(trigger: TriggerIn) -> dict[str, Any]:
    settings = trigger.trigger_settings
    out: dict[str, Any] = {"type": trigger.type or "manual"}
    if settings is not None:
        out["trigger_settings"] = settings.model_dump(exclude_none=True)
    return out


def policy_fields(body: PolicyIn, registry_names: dict[int, str]) -> dict[str, Any]:
    """The policy fields ``body`` sets, in regflow's form (registries by name)."""
    given = body.model_fields_set
    spec: dict[str, Any] = {f: getattr(body, f) for f in _POLICY_FIELDS if f in given}
    for side in ("src_registry", "dest_registry"):
        if side in given:
            ref = getattr(body, side)
            number = ref.id if ref is not None else None
            if number is not None and number not in registry_names and number != 0:
                raise HarborError(400, f"{side}: no registry with id {number}")
            # Harbor's id 0 (or none) is its local registry, which regflow does not have: the
            # policy's own validation then says both sides must be named.
            spec[side] = registry_names.get(number) if number is not None else None
    if "filters" in given:
        spec["filters"] = [_filter(f) for f in body.filters or []]
    if "trigger" in given and body.trigger is not None:
        spec["trigger"] = _trigger(body.trigger)
    # Harbor's deprecated ``deletion`` is read when ``replicate_deletion`` is not sent.
    if "replicate_deletion" in given:
        spec["replicate_deletion"] = body.replicate_deletion
    elif "deletion" in given:
        spec["replicate_deletion"] = body.deletion
    if "speed" in given and body.speed is not None:
        # Harbor stores 0 for "no limit" (its clients' default); regflow writes that as -1.
        spec["speed"] = -1 if body.speed == 0 else body.speed
    spec |= body.model_extra or {}
    return {k: v for k, v in spec.items() if v is not None or k in ("src_registry", "dest_registry")}


def _cron_out(cron: str | None) -> str:
    if not cron:
        return ""
    return cron if cron.startswith("@") else _SECONDS_FIELD + cron


def policy_out(policy: Policy, number: int, times: tuple[datetime, datetime],
               registries: dict[str, RegistryOut]) -> PolicyOut:
    settings = policy.trigger.trigger_settings
    trigger_settings: dict[str, Any] = {"cron": _cron_out(settings.cron)}
    if settings.interval_seconds is not None:
        trigger_settings["interval_seconds"] = settings.interval_seconds
    filters = [FilterOut(type=f.type, value=label_names(f.value) if f.type == "label" else f.value,
                         decoration=f.decoration) for f in policy.filters]
    own = policy.model_dump(mode="json", exclude={*_POLICY_FIELDS, "src_registry", "dest_registry",
                                                  "filters", "trigger", "replicate_deletion", "speed"})
    try:
        src, dest = registries[str(policy.src_registry)], registries[str(policy.dest_registry)]
    except KeyError as exc:
        raise ConfigError(f"policy {policy.name!r} names registry {exc.args[0]!r}, "
                          "which is not stored") from None
    return PolicyOut(
        id=number, name=policy.name, description=policy.description, src_registry=src, dest_registry=dest,
        dest_namespace=policy.dest_namespace,
        dest_namespace_replace_count=policy.dest_namespace_replace_count,
        trigger=TriggerOut(type=policy.trigger.type, trigger_settings=trigger_settings), filters=filters,
        replicate_deletion=policy.replicate_deletion, deletion=policy.replicate_deletion,
        override=policy.override, enabled=policy.enabled, speed=policy.speed,
        copy_by_chunk=policy.copy_by_chunk, single_active_replication=policy.single_active_replication,
        creation_time=times[0], update_time=times[1], **own)
