"""A running Harbor's registries and replication policies, as a regflow config file.

Pure mapping: Harbor's JSON (as ``GET /api/v2.0/registries`` and ``/replication/policies``
answer it) in, a config document ``apply -f`` accepts plus one note per item out. Harbor never
returns secrets, so every credential becomes a ``${ENV}`` placeholder named after its registry.
Harbor's policies have one side that is Harbor itself (``null`` or registry id 0, "Local"):
that side becomes one ``harbor``-type registry entry for the Harbor's own URL.

Whatever would make regflow replicate more, or something else, than Harbor does is not written
(a filter kind regflow lacks skips its policy: dropping a filter would widen the selection); what
regflow cannot express more cautiously is changed and said (a cron with seconds becomes manual).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from adapters import ADAPTERS, adapter_info
from adapters.errors import ConfigError
from policies.filters import LABEL_SEPARATOR, literal_names
from policies.models import NAME_RE, Config, Filter, Policy, Trigger, parse_config
from policies.namespace import check_path_rule, replace_namespace

# Harbor's own side of a policy: its API answers the local registry as id 0 ("Local", type
# harbor, its internal core URL), older releases and hand-made payloads as null.
LOCAL_REGISTRY_ID: Final = 0
# Placeholder names: REGFLOW_<REGISTRY>_ACCESS_SECRET (and _WEBHOOK_SECRET), the registry name
# upper-cased with every other character an underscore; the prefix keeps them clear of PATH & co.
ENV_PREFIX: Final = "REGFLOW_"
ACCESS_SECRET_SUFFIX: Final = "_ACCESS_SECRET"
WEBHOOK_SECRET_SUFFIX: Final = "_WEBHOOK_SECRET"
# Harbor's speed: 0 (and, from older clients, negative) is unlimited; regflow writes -1.
UNLIMITED_SPEED: Final = -1
_NAME_LIMIT: Final = 63
_NOT_NAME_RE: Final = re.compile(r"[^a-z0-9._-]+")
_NOT_ENV_RE: Final = re.compile(r"[^A-Z0-9]+")
# Harbor's credential types regflow has; "secret" is Harbor's internal one for its own core.
_CREDENTIAL_TYPES: Final = frozenset({"basic", "oauth"})


# -- Harbor's payloads (swagger: Registry, RegistryCredential, ReplicationPolicy, ...) ------------


class _Harbor(BaseModel):
    # Harbor adds fields release by release, and go-swagger leaves out every false, zero and
    # empty value (omitempty): only the fields read here are checked, each with Harbor's zero.
    model_config = ConfigDict(extra="ignore")


def _none_is_zero(default: Any) -> Callable[[Any], Any]:
    def coerce(value: Any) -> Any:
        return default if value is None else value
    return coerce


class HarborCredential(_Harbor):
    type: str = ""
    access_key: str = ""
    # "*****" when Harbor holds a secret, "" or absent when it does not; never the secret.
    access_secret: str = ""

    _strings = field_validator("type", "access_key", "access_secret", mode="before")(_none_is_zero(""))


class HarborRegistry(_Harbor):
    id: int = 0
    name: str = ""
    type: str = ""
    url: str = ""
    description: str = ""
    insecure: bool = False
    ca_certificate: str = ""
    credential: HarborCredential | None = None

    _strings = field_validator("name", "type", "url", "description", "ca_certificate",
                               mode="before")(_none_is_zero(""))
    _flags = field_validator("insecure", mode="before")(_none_is_zero(False))

    @property
    def label(self) -> str:
        return f"registry {self.name!r} (id {self.id})"


class HarborFilter(_Harbor):
    type: str = ""
    # A string for name, tag and resource filters; a list of label names for label filters.
    value: Any = None
    decoration: str = ""

    _strings = field_validator("type", "decoration", mode="before")(_none_is_zero(""))


class HarborTriggerSettings(_Harbor):
    cron: str = ""

    _strings = field_validator("cron", mode="before")(_none_is_zero(""))


class HarborTrigger(_Harbor):
    type: str = "manual"
    trigger_settings: HarborTriggerSettings | None = None

    _strings = field_validator("type", mode="before")(_none_is_zero("manual"))


class HarborPolicy(_Harbor):
    id: int = 0
    name: str = ""
    description: str = ""
    src_registry: HarborRegistry | None = None
    dest_registry: HarborRegistry | None = None
    dest_namespace: str = ""
    # null: Harbor's legacy mode, which is -1.
    dest_namespace_replace_count: int = -1
    trigger: HarborTrigger | None = None
    filters: list[HarborFilter] = []
    replicate_deletion: bool = False
    # Harbor's older name for replicate_deletion, still sent alongside it.
    deletion: bool = False
    override: bool = False
    enabled: bool = False
    speed: int = 0
    copy_by_chunk: bool = False
    single_active_replication: bool = False

    _strings = field_validator("name", "description", "dest_namespace", mode="before")(_none_is_zero(""))
    _count = field_validator("dest_namespace_replace_count", mode="before")(_none_is_zero(-1))
    _filters = field_validator("filters", mode="before")(_none_is_zero([]))
    _flags = field_validator("replicate_deletion", "deletion", "override", "enabled", "copy_by_chunk",
                             "single_active_replication", mode="before")(_none_is_zero(False))
    _speed = field_validator("speed", mode="before")(_none_is_zero(0))

    @property
    def label(self) -> str:
        return f"policy {self.name!r} (id {self.id})"


def is_local(registry: HarborRegistry | None) -> bool:
    return registry is None or registry.id == LOCAL_REGISTRY_ID


# -- what the import hands back -----------------------------------------------------------------


Outcome = Literal["maps", "changed", "skipped"]


class Note(BaseModel):
    """One line of the dry-run table: a Harbor item, what it became, and why if not as it was."""

    item: Literal["registry", "policy", "filter", "trigger", "field", "credential"]
    harbor: str
    regflow: str = ""
    outcome: Outcome = "maps"
    reason: str = ""


class Placeholder(BaseModel):
    """An environment variable the imported file reads: set it before ``apply`` is used."""

    variable: str
    registry: str
    what: str


class ImportResult(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    # The config file's content, as written (placeholders, not secrets).
    document: dict[str, Any]
    # The same, validated as ``apply -f`` validates it.
    config: Config
    notes: list[Note]
    placeholders: list[Placeholder]


class _Skip(Exception):
    """The policy cannot be expressed without replicating something Harbor would not."""


# -- names --------------------------------------------------------------------------------------


def regflow_name(text: str, taken: set[str], fallback: str) -> str:
    """A valid regflow name close to ``text``, not in ``taken`` (which it joins)."""
    base = _NOT_NAME_RE.sub("-", text.lower()).strip("-._")[:_NAME_LIMIT].strip("-._") or fallback
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"-{n}"
        name = base[: _NAME_LIMIT - len(suffix)] + suffix
    taken.add(name)
    return name


def env_name(registry: str, suffix: str, taken: set[str]) -> str:
    """``REGFLOW_<REGISTRY><suffix>``, unique among ``taken`` (which it joins)."""
    stem = ENV_PREFIX + _NOT_ENV_RE.sub("_", registry.upper()).strip("_")
    name, n = stem + suffix, 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}{suffix}"
    taken.add(name)
    return name


def _placeholder(variable: str) -> str:
    return "${" + variable + "}"


# -- the mapping --------------------------------------------------------------------------------


class _Mapping:
    def __init__(self, harbor_url: str, user: str, local_name: str | None, insecure: bool,
                 ca_certificate: str | None) -> None:
        self.harbor_url = harbor_url.rstrip("/")
        self.user = user
        self.local_name = local_name
        self.insecure = insecure
        self.ca_certificate = ca_certificate
        self.notes: list[Note] = []
        self.placeholders: list[Placeholder] = []
        self.env_taken: set[str] = set()
        self.registry_names: set[str] = set()
        self.registries: list[dict[str, Any]] = []
        # Harbor registry id → (regflow name, type); a registry left out is absent.
        self.by_id: dict[int, tuple[str, str]] = {}
        self.local: dict[str, Any] | None = None

    def note(self, item: Any, harbor: str, regflow: str = "", outcome: Outcome = "maps",
             reason: str = "") -> None:
        self.notes.append(Note(item=item, harbor=harbor, regflow=regflow, outcome=outcome, reason=reason))

    # -- registries -------------------------------------------------------------------------------

    def registry(self, harbor: HarborRegistry) -> None:
        if harbor.type not in ADAPTERS:
            why = "a type regflow does not know" if harbor.type else "no type given"
            self.note("registry", harbor.label, outcome="skipped",
                      reason=f"type {harbor.type!r}: {why}; policies using it are skipped too")
            return
        name = regflow_name(harbor.name, self.registry_names, f"registry-{harbor.id}")
        entry: dict[str, Any] = {"name": name, "type": harbor.type, "url": harbor.url.rstrip("/")}
        if harbor.description:
            entry["description"] = harbor.description
        entry["insecure"] = harbor.insecure
        if harbor.ca_certificate.strip():
            entry["ca_certificate"] = harbor.ca_certificate
        reasons = [] if name == harbor.name else [f"renamed: {harbor.name!r} is not a regflow name"]
        # Said and listed only once the registry is in.
        secret: tuple[Note, Placeholder] | None = None
        credential = harbor.credential
        if credential is not None and (credential.access_key or credential.access_secret):
            kind = credential.type if credential.type in _CREDENTIAL_TYPES else "basic"
            variable = env_name(name, ACCESS_SECRET_SUFFIX, self.env_taken)
            entry["credential"] = {"type": kind, "access_key": credential.access_key,
                                   "access_secret": _placeholder(variable)}
            secret = (
                Note(item="credential", harbor=f"{harbor.label} credential", regflow=_placeholder(variable),
                     outcome="changed",
                     reason="Harbor never returns secrets: set the variable before using the registry"),
                Placeholder(variable=variable, registry=name,
                            what=f"the secret of {credential.access_key or 'the ' + kind + ' credential'}"))
        try:
            parse_config({"version": 1, "registries": [entry]})
        except ConfigError as exc:
            self.registry_names.discard(name)
            self.note("registry", harbor.label, outcome="skipped", reason=exc.message)
            return
        self.registries.append(entry)
        self.by_id[harbor.id] = (name, harbor.type)
        self.note("registry", harbor.label, name, "changed" if reasons else "maps", "; ".join(reasons))
        if secret is not None:
            self.notes.append(secret[0])
            self.placeholders.append(secret[1])

    def local_registry(self) -> tuple[str, str]:
        """Harbor itself, as a ``harbor``-type entry; made once, before the policies that use it."""
        if self.local is None:
            host = self.harbor_url.split("://", 1)[-1]
            name = regflow_name(self.local_name or host, self.registry_names, "local-harbor")
            variable = env_name(name, ACCESS_SECRET_SUFFIX, self.env_taken)
            self.local = {"name": name, "type": "harbor", "url": self.harbor_url,
                          "description": "the Harbor this file was imported from",
                          "insecure": self.insecure,
                          "credential": {"type": "basic", "access_key": self.user,
                                         "access_secret": _placeholder(variable)}}
            if self.ca_certificate:
                self.local["ca_certificate"] = self.ca_certificate
            self.registries.append(self.local)
            self.placeholders.append(Placeholder(variable=variable, registry=name,
                                                 what=f"the password of {self.user} on {self.harbor_url}"))
            self.note("registry", "the local Harbor (id 0)", name, "changed",
                      f"Harbor's own side of its policies: a harbor registry for {self.harbor_url}, "
                      f"as {self.user} (a robot account is the better choice)")
        return self.local["name"], "harbor"

    def local_webhook(self) -> None:
        """Event-based policies from the local Harbor need Harbor to notify regflow."""
        assert self.local is not None
        if "webhook" in self.local:
            return
        variable = env_name(self.local["name"], WEBHOOK_SECRET_SUFFIX, self.env_taken)
        self.local["webhook"] = {"kind": "harbor", "auth": "bearer", "secret": _placeholder(variable)}
        self.placeholders.append(Placeholder(variable=variable, registry=self.local["name"],
                                             what="the bearer token Harbor's webhook sends to regflow serve"))
        self.note("registry", "the local Harbor (id 0) webhook", self.local["name"], "changed",
                  "event-based policies: add a Harbor webhook policy (PUSH_ARTIFACT, DELETE_ARTIFACT) "
                  f"posting to regflow serve's /webhooks/{self.local['name']} with Auth Header "
                  f"'Bearer ${{{variable}}}'")

    def side(self, harbor: HarborRegistry | None) -> tuple[str, str]:
        if is_local(harbor):
            return self.local_registry()
        assert harbor is not None
        found = self.by_id.get(harbor.id)
        if found is None:
            raise _Skip(f"{harbor.label} was not imported")
        return found

    # -- policies ---------------------------------------------------------------------------------

    def policies(self, harbor: Sequence[HarborPolicy]) -> list[dict[str, Any]]:
        taken: set[str] = set()
        out: list[dict[str, Any]] = []
        for policy in harbor:
            mark = len(self.notes)
            try:
                entry = self.policy(policy, taken)
            except _Skip as exc:
                del self.notes[mark:]  # its filter and trigger lines say nothing once it is skipped
                self.note("policy", policy.label, outcome="skipped", reason=str(exc))
                continue
            out.append(entry)
            renamed = entry["name"] != policy.name
            # The policy's own line goes before its filters' and trigger's.
            self.notes.insert(mark, Note(
                item="policy", harbor=policy.label, regflow=entry["name"],
                outcome="changed" if renamed else "maps",
                reason=f"renamed: {policy.name!r} is not a regflow name" if renamed else ""))
            if entry["trigger"]["type"] == "event_based" and is_local(policy.src_registry):
                self.local_webhook()
        return out

    def policy(self, harbor: HarborPolicy, taken: set[str]) -> dict[str, Any]:
        if is_local(harbor.src_registry) and is_local(harbor.dest_registry):
            raise _Skip("both sides are the local Harbor")
        src, src_type = self.side(harbor.src_registry)
        dest, dest_type = self.side(harbor.dest_registry)
        where = harbor.label
        entry: dict[str, Any] = {
            "name": "", "description": harbor.description, "src_registry": src, "dest_registry": dest,
            "dest_namespace": harbor.dest_namespace,
            "dest_namespace_replace_count": harbor.dest_namespace_replace_count,
            "filters": [self.filter(f, i, where, src_type) for i, f in enumerate(harbor.filters)],
            "trigger": self.trigger(harbor.trigger, where, src_type),
            "replicate_deletion": harbor.replicate_deletion or harbor.deletion,
            "override": harbor.override,
            "enabled": harbor.enabled,
            "speed": harbor.speed if harbor.speed > 0 else UNLIMITED_SPEED,
            "copy_by_chunk": harbor.copy_by_chunk,
            "single_active_replication": harbor.single_active_replication,
        }
        entry["filters"] = [f for f in entry["filters"] if f is not None]
        if harbor.speed > 0:
            self.note("field", f"{where} speed", str(harbor.speed), "changed",
                      "Harbor limits each task to it, regflow the whole policy (Kbit/s)")
        if not info_target(dest_type):
            raise _Skip(f"registry type {dest_type!r} can only be a source in regflow")
        name = regflow_name(harbor.name, set(taken), f"policy-{harbor.id}")
        entry["name"] = name
        try:
            model = Policy.model_validate(entry)
        except ValidationError as exc:
            raise _Skip(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        _check_targets(model, dest_type)
        taken.add(name)
        return entry

    def filter(self, harbor: HarborFilter, index: int, where: str, src_type: str) -> dict[str, str] | None:
        label = f"{where} filter {index} ({harbor.type or 'no type'})"
        decoration = harbor.decoration or "matches"
        if harbor.type not in ("name", "tag", "label", "resource"):
            raise _Skip(f"filter kind {harbor.type!r} regflow lacks (leaving it out would replicate more)")
        if harbor.type not in adapter_info(src_type).filters:
            raise _Skip(f"{harbor.type} filters are not supported on a {src_type!r} source "
                        "(leaving it out would replicate more)")
        if harbor.type == "label":
            names = _label_names(harbor.value)
            if not names:
                self.note("filter", label, outcome="skipped", reason="no labels named: Harbor ignores it too")
                return None
            value = LABEL_SEPARATOR.join(names)
        elif isinstance(harbor.value, str):
            value = harbor.value
        else:
            raise _Skip(f"filter {index} ({harbor.type}): its value is not a string")
        if harbor.type == "resource" and value not in adapter_info(src_type).resource_types:
            raise _Skip(f"a {src_type!r} source holds no {value!r} resources")
        mapped = {"type": harbor.type, "value": value, "decoration": decoration}
        try:
            Filter.model_validate(mapped)
        except ValidationError as exc:
            raise _Skip(f"filter {index} ({harbor.type}): "
                        f"{exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        self.note("filter", label, f"{harbor.type} {decoration} {value!r}")
        return mapped

    def trigger(self, harbor: HarborTrigger | None, where: str, src_type: str) -> dict[str, Any]:
        label = f"{where} trigger"
        kind = harbor.type if harbor is not None else "manual"
        cron = harbor.trigger_settings.cron if harbor is not None and harbor.trigger_settings else ""
        if kind == "manual":
            self.note("trigger", label, "manual")
            return {"type": "manual"}
        if kind not in adapter_info(src_type).triggers and kind in ("scheduled", "event_based"):
            return self.manual(label, f"a {src_type!r} source cannot start {kind} runs")
        if kind == "event_based":
            self.note("trigger", label, "event_based")
            return {"type": "event_based"}
        if kind != "scheduled":
            return self.manual(label, f"trigger type {kind!r} regflow lacks")
        mapped = {"type": "scheduled", "trigger_settings": {"cron": cron}}
        try:
            trigger = Trigger.model_validate(mapped)
        except ValidationError as exc:
            return self.manual(label, exc.errors()[0]["msg"].removeprefix("Value error, "))
        normalized = trigger.trigger_settings.cron
        self.note("trigger", label, f"scheduled {normalized!r}",
                  "maps" if normalized == cron else "changed",
                  "" if normalized == cron else f"Harbor's {cron!r} at minute resolution")
        return {"type": "scheduled", "trigger_settings": {"cron": normalized}}

    def manual(self, label: str, reason: str) -> dict[str, Any]:
        self.note("trigger", label, "manual", "changed", f"{reason}: run it by hand or set a trigger")
        return {"type": "manual"}


def info_target(type_: str) -> bool:
    return adapter_info(type_).can_be_target


def _label_names(value: Any) -> list[str]:
    """Harbor's label filter value: a list of names (older releases: one string)."""
    if value is None:  # omitted, as go-swagger omits an empty list
        return []
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise _Skip("a label filter's value is not a list of label names")
    if any(LABEL_SEPARATOR in n for n in names):
        raise _Skip(f"a label name holds {LABEL_SEPARATOR!r}, which separates names in regflow")
    return [n.strip() for n in names if n.strip()]


def _check_targets(policy: Policy, dest_type: str) -> None:
    """What ``apply`` checks of the named repositories: the target's path rule."""
    info = adapter_info(dest_type)
    for name in literal_names(policy.filters) or []:
        try:
            target = replace_namespace(name, policy.dest_namespace, policy.dest_namespace_replace_count)
            check_path_rule(target, info.min_path_components, info.max_path_components)
        except ConfigError as exc:
            raise _Skip(exc.message) from None


def parse_harbor(model: type[HarborRegistry] | type[HarborPolicy], items: Iterable[Any],
                 what: str) -> list[Any]:
    """Harbor's list answer as models; an item of another shape is bad input naming its place."""
    parsed = []
    for i, item in enumerate(items):
        try:
            parsed.append(model.model_validate(item))
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            raise ConfigError(f"{what}[{i}].{where}: unexpected answer from Harbor: "
                              f"{problem['msg']}") from None
    return parsed


def import_harbor(harbor_url: str, user: str, registries: Sequence[HarborRegistry],
                  policies: Sequence[HarborPolicy], *, local_name: str | None = None,
                  insecure: bool = False, ca_certificate: str | None = None) -> ImportResult:
    """The regflow config for Harbor ``harbor_url``'s ``registries`` and ``policies``;
    ``insecure`` and ``ca_certificate`` (PEM text or a file path) go to Harbor's own entry."""
    if local_name is not None and not NAME_RE.fullmatch(local_name):
        raise ConfigError(f"--local-name {local_name!r} is not a regflow name (a-z, 0-9, '.', '_', '-')")
    mapping = _Mapping(harbor_url, user, local_name, insecure, ca_certificate)
    # Harbor's own registries first, so they keep their names; the local entry takes what is left.
    for registry in registries:
        mapping.registry(registry)
    if any(is_local(p.src_registry) or is_local(p.dest_registry) for p in policies):
        mapping.local_registry()
    mapped_policies = mapping.policies(policies)
    document: dict[str, Any] = {"version": 1, "registries": mapping.registries, "policies": mapped_policies}
    config = parse_config(document)
    return ImportResult(document=document, config=config, notes=mapping.notes,
                        placeholders=mapping.placeholders)
