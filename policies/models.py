"""Registries and replication policies as the user writes them, with Harbor's field names.

Pure validation: nothing here touches the network, the database or a secret's real value.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, NamedTuple, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from adapters.errors import ConfigError
from adapters.oci.platform import parse_platforms
from adapters.oci.reference import validate_repository
from policies.filters import RESOURCE_TYPES, check_filter_value, literal_names
from policies.namespace import replace_namespace

# Names become Prefect deployment names and appear in URLs and CLI arguments.
NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TYPE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_REF_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BLOCK_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]*")
ENV_PREFIX: Final = "${"
PREFECT_SECRET_PREFIX: Final = "prefect-secret:"


def _check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1 to 63 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit (the name becomes a Prefect deployment name)"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]


class _Model(BaseModel):
    # hide_input_in_errors: a model-level error would otherwise print the raw input dict,
    # access_secret included, in str(ValidationError).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)


class SecretSource(NamedTuple):
    """Where the real secret lives: ``name`` is the variable or block name, "" for a literal."""

    kind: Literal["literal", "env", "prefect-secret"]
    name: str


def _secret_form(value: SecretStr, info: ValidationInfo) -> SecretStr:
    """A literal, ``${ENV_VAR}`` or ``prefect-secret:BLOCK_NAME``, and not empty."""
    # Messages never repeat the text: it may be the secret itself.
    field = info.field_name or "secret"
    text = value.get_secret_value()
    if not text:
        raise ValueError(f"{field} is empty")
    if text.startswith(ENV_PREFIX) and not _ENV_REF_RE.fullmatch(text):
        raise ValueError(f"{field} starts with '${{' but is not a ${{ENV_VAR}} reference")
    if text.startswith(PREFECT_SECRET_PREFIX) and not _BLOCK_NAME_RE.fullmatch(
        text[len(PREFECT_SECRET_PREFIX) :]
    ):
        raise ValueError(f"{field}: a prefect-secret: reference needs a block name of a-z, 0-9 and '-'")
    return value


# A secret as written in a config file; resolved only where it is used (policies.secrets).
SecretReference = Annotated[SecretStr, AfterValidator(_secret_form)]


def secret_source(value: SecretStr) -> SecretSource:
    """Where the secret written as ``value`` lives."""
    text = value.get_secret_value()
    env = _ENV_REF_RE.fullmatch(text)
    if env:
        return SecretSource("env", env.group(1))
    if text.startswith(PREFECT_SECRET_PREFIX):
        return SecretSource("prefect-secret", text[len(PREFECT_SECRET_PREFIX) :])
    return SecretSource("literal", "")


class Credential(_Model):
    type: Literal["basic", "oauth"] = "basic"
    access_key: str = ""
    access_secret: SecretReference

    @model_validator(mode="after")
    def _basic_needs_key(self) -> Self:
        if self.type == "basic" and not self.access_key:
            raise ValueError("access_key: a basic credential needs a user name")
        return self

    @property
    def secret_source(self) -> SecretSource:
        return secret_source(self.access_secret)


class WebhookSettings(_Model):
    """How a registry's notifications reach regflow: the sender's payload kind, and its proof.

    ``bearer``: the sender presents ``secret`` as a bearer token; ``hmac``: it signs the body
    with it. The secret takes the same forms as a credential's ``access_secret``.
    """

    kind: Literal["distribution", "harbor", "dockerhub"] = "distribution"
    auth: Literal["bearer", "hmac"] = "bearer"
    secret: SecretReference

    @property
    def secret_source(self) -> SecretSource:
        return secret_source(self.secret)


# Registry types whose url names a local directory (file:///absolute/path), not an HTTP
# endpoint: an OCI image layout per repository under it (adapters/oci_layout.py).
DIRECTORY_TYPES: Final = frozenset({"oci-layout"})


def _directory_url(value: str) -> str:
    parts = urlsplit(value)
    if (parts.scheme != "file" or parts.netloc or parts.query or parts.fragment or value != value.strip()
            or not parts.path.startswith("/") or not parts.path.strip("/")):
        raise ValueError(f"{value!r} is not a file:///absolute/path URL (this registry type is a directory)")
    return value.rstrip("/")


class Registry(_Model):
    name: Name
    description: str = ""
    # Checked against the adapters' known types where those are registered, not here.
    type: str
    url: str
    credential: Credential | None = None
    # Set when the registry posts notifications that trigger event-based replication.
    webhook: WebhookSettings | None = None
    insecure: bool = False
    # PEM text or a path to a PEM file; it wins over ``insecure``, as in Harbor.
    ca_certificate: str | None = None
    # Adapter settings that are not credentials (an API URL, the namespaces to list): each
    # type names the ones it takes (AdapterInfo.options), checked at apply.
    options: dict[str, str | list[str]] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _type_token(cls, value: str) -> str:
        if not _TYPE_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a registry type string such as 'docker-registry'")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        parts = urlsplit(value)
        if info.data.get("type") in DIRECTORY_TYPES:
            return _directory_url(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or value != value.strip():
            raise ValueError(f"{value!r} is not an http(s)://host[:port][/prefix] URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("the URL must not carry credentials; use the credential field")
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            raise ValueError(f"{value!r} must not have a query or fragment")
        try:
            parts.port  # noqa: B018 -- urlsplit checks the port only when asked
        except ValueError:
            raise ValueError(f"{value!r} has an invalid port") from None
        value = value.rstrip("/")
        if urlsplit(value).path.endswith("/v2"):
            raise ValueError(f"{value!r}: leave out '/v2', the client adds it")
        return value

    @field_validator("ca_certificate")
    @classmethod
    def _pem_or_path(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "-----BEGIN" in value:
            if "-----END" not in value:
                raise ValueError("the PEM text has a BEGIN line but no END line")
        elif "\n" in value:
            raise ValueError("neither PEM text (no -----BEGIN line) nor a file path")
        return value


class Filter(_Model):
    type: Literal["name", "tag", "label", "resource"]
    value: str
    decoration: Literal["matches", "excludes"] = "matches"

    @field_validator("value")
    @classmethod
    def _value_for_type(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("type")
        if kind in ("name", "tag"):
            try:
                check_filter_value(kind, value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        elif kind == "resource" and value not in RESOURCE_TYPES:
            raise ValueError(f"resource filter {value!r} must be one of {', '.join(sorted(RESOURCE_TYPES))}")
        return value

    @field_validator("decoration")
    @classmethod
    def _resource_matches_only(cls, value: str, info: ValidationInfo) -> str:
        if value == "excludes" and info.data.get("type") == "resource":
            raise ValueError("a resource filter only selects; 'excludes' is not supported")
        return value


# Prefect schedules run at minute resolution: a Harbor 6-field cron is accepted only with
# its seconds field at 0, and handed on in the 5-field form (croniter would read a sixth
# field as seconds at the end, not the start).
_CRON_MACROS: Final = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_MONTHS: Final = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS: Final = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_CRON_ITEM_RE: Final = re.compile(r"(?P<range>\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/(?P<step>[0-9]+))?")


def _cron_value(text: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    if text.isascii() and text.isdigit():
        return low <= int(text) <= high
    return text.lower() in names


def _cron_item_ok(item: str, field: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    if item == "?" and field.startswith("day"):
        return True
    if item == "L" and field == "day of month":
        return True
    if "#" in item and field == "day of week":
        day, _, nth = item.partition("#")
        return nth in ("1", "2", "3", "4", "5") and _cron_value(day, low, high, names)
    m = _CRON_ITEM_RE.fullmatch(item)
    if not m or (m["step"] is not None and int(m["step"]) == 0):
        return False
    return m["range"] == "*" or all(_cron_value(v, low, high, names) for v in m["range"].split("-"))


def normalize_cron(expression: str) -> str:
    """The 5-field form of a 5-field or Harbor 6-field (seconds first, = 0) cron expression."""
    if expression.strip().lower() in _CRON_MACROS:
        return expression.strip().lower()
    fields = expression.split()
    if len(fields) == 6:
        if fields[0] != "0":
            raise ValueError(f"cron {expression!r}: the seconds field of a 6-field cron must be 0")
        fields = fields[1:]
    if len(fields) != 5:
        raise ValueError(
            f"cron {expression!r} needs 5 fields (minute hour day month weekday), "
            "or Harbor's 6 with seconds first"
        )
    for text, (field, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        if not all(_cron_item_ok(item, field, low, high, names) for item in text.split(",")):
            raise ValueError(f"cron {field} field {text!r} is invalid (values {low}-{high})")
    normalized = " ".join(fields)
    try:
        from croniter import croniter
    except ImportError:
        return normalized
    if not croniter.is_valid(normalized):
        raise ValueError(f"cron {expression!r} is invalid")
    return normalized


class TriggerSettings(_Model):
    cron: str | None = None
    interval_seconds: int | None = Field(default=None, gt=0)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        # Harbor exports manual triggers with {"cron": ""}.
        if value is None or not value.strip():
            return None
        return normalize_cron(value)


class Trigger(_Model):
    type: Literal["manual", "scheduled", "event_based"] = "manual"
    trigger_settings: TriggerSettings = Field(default_factory=TriggerSettings)

    @model_validator(mode="after")
    def _settings_fit_type(self) -> Self:
        settings = self.trigger_settings
        given = [f for f in ("cron", "interval_seconds") if getattr(settings, f) is not None]
        if self.type == "scheduled" and len(given) != 1:
            raise ValueError(
                "trigger_settings: a scheduled trigger needs exactly one of cron and interval_seconds"
                + (", got both" if given else "")
            )
        if self.type != "scheduled" and given:
            raise ValueError(
                f"trigger_settings.{given[0]} is only used by a scheduled trigger, not {self.type}"
            )
        return self


# Retention of executions (flows/retention.py). Harbor keeps the newest 50 executions of each
# replication policy whatever their age and sweeps once a day; regflow keeps the newest
# DEFAULT_KEEP_LAST and, beyond those, whatever finished within DEFAULT_RETENTION_DAYS: a month
# of history to look back on, and at least a hundred runs for a policy that rarely runs.
DEFAULT_RETENTION_DAYS: Final = 30
DEFAULT_KEEP_LAST: Final = 100
# Each sweep reads the kept runs back and holds them while it judges the older ones: a bound on
# that, and more history than anyone pages through.
MAX_KEEP_LAST: Final = 10_000
# A century: datetime arithmetic leaves its range past ~2,000 years, and no history is older.
MAX_RETENTION_DAYS: Final = 36_500


class Retention(_Model):
    """Which finished executions of a policy are deleted: those older than ``days`` that are
    not among the newest ``keep_last``. Running and scheduled ones are never deleted."""

    # strict: YAML's ``true`` or ``7.5`` is a mistake here, not 1 or 7.
    days: int = Field(default=DEFAULT_RETENTION_DAYS, strict=True)
    keep_last: int = Field(default=DEFAULT_KEEP_LAST, strict=True)

    @field_validator("days")
    @classmethod
    def _days(cls, value: int) -> int:
        if not 0 <= value <= MAX_RETENTION_DAYS:
            raise ValueError(f"{value} is not 0 (only keep_last keeps) to {MAX_RETENTION_DAYS} days")
        return value

    @field_validator("keep_last")
    @classmethod
    def _keep_last(cls, value: int) -> int:
        if not 0 <= value <= MAX_KEEP_LAST:
            raise ValueError(f"{value} is not 0 (only days keeps) to {MAX_KEEP_LAST} executions")
        return value

    @model_validator(mode="after")
    def _keeps_something(self) -> Self:
        if self.days == 0 and self.keep_last == 0:
            raise ValueError("days 0 and keep_last 0 would delete every finished execution: "
                             "set one of them above 0")
        return self


# A mirror prune deletes at most this many tags per run unless forced: a source that lost most
# of its tags at once (an outage, a wrong namespace) should not empty the target unseen.
DEFAULT_PRUNE_LIMIT: Final = 50
# The most a ``latest.count`` may keep: beyond it the user wants no limit at all.
MAX_LATEST_COUNT: Final = 10_000
# A spread execution's parts each cost a flow run process on some worker and a few server
# writes; more parts than this is more start-up than a 10,000-repository policy gains from.
MAX_SPREAD: Final = 64


class Latest(_Model):
    """Keep the newest ``count`` of the tags the other filters select."""

    count: int = Field(ge=1, le=MAX_LATEST_COUNT, strict=True)
    # semver: by version (tags that are not versions are dropped); created: by the image
    # config's ``created`` time.
    order: Literal["semver", "created"] = "semver"


class Policy(_Model):
    name: Name
    description: str = ""
    # Both are named registries: unlike Harbor, neither side has to be a local Harbor.
    src_registry: str | None = Field(default=None, validate_default=True)
    dest_registry: str | None = Field(default=None, validate_default=True)
    dest_namespace: str = ""
    dest_namespace_replace_count: int = Field(default=-1, ge=-1)
    filters: list[Filter] = Field(default_factory=list)
    trigger: Trigger = Field(default_factory=Trigger)
    replicate_deletion: bool = False
    override: bool = True
    enabled: bool = True
    # Kbit/s for the whole policy; -1 is unlimited.
    speed: int = -1
    copy_by_chunk: bool = False
    single_active_replication: bool = False
    # Parts an execution's transfers are split into, each a run of its own that any worker of
    # the work pool may take (flows/spread.py): 1 runs them all in the execution's process.
    spread: int = Field(default=1, ge=1, le=MAX_SPREAD, strict=True)
    # After copying, check that the target holds every selected tag whole (tasks/verify.py); a
    # tag or blob found missing fails the execution.
    verify: bool = False
    # Unset here: the file's top-level ``retention``, else the defaults (Config fills it in, so
    # the store keeps what applies).
    retention: Retention = Field(default_factory=Retention)
    # What travels (issue 17). Platforms of multi-platform images, "os/arch[/variant]" or
    # "os/*"; empty keeps every platform.
    platforms: list[str] = Field(default_factory=list)
    # keep: the source index byte for byte (digest and signatures stay valid); rewrite: a new
    # index of the kept platforms only.
    platform_index: Literal["keep", "rewrite"] = "keep"
    # The newest N of the tags the filters select (None: all of them).
    latest: Latest | None = None
    # Signatures, attestations and other referrers of every copied manifest travel with it.
    referrers: bool = True
    # Digest-only artifacts, where the source can list them.
    untagged: bool = False
    # After a successful run, delete target tags in the policy's scope the source no longer has.
    prune: bool = False
    prune_limit: int = Field(default=DEFAULT_PRUNE_LIMIT, ge=1, strict=True)

    @field_validator("src_registry", "dest_registry")
    @classmethod
    def _registry_given(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            side = "copy from" if info.field_name == "src_registry" else "copy to"
            raise ValueError(f"name the registry to {side}; both src_registry and dest_registry are required")
        return value

    @field_validator("dest_namespace")
    @classmethod
    def _namespace_path(cls, value: str) -> str:
        if value:
            try:
                validate_repository(value)
            except ConfigError as exc:
                raise ValueError(f"dest_namespace {value!r} is not a repository path: {exc}") from None
        return value

    @field_validator("speed")
    @classmethod
    def _speed(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError(f"speed {value} must be -1 (unlimited) or a positive number of Kbit/s")
        return value

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, value: list[str]) -> list[str]:
        # Kept in the form the engine compares (lower case, x86_64 as amd64), each once.
        try:
            return [str(spec) for spec in parse_platforms(value, field=None)]
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _targets(self) -> Self:
        names = literal_names(self.filters) or []
        for name in names:
            try:
                target = replace_namespace(name, self.dest_namespace, self.dest_namespace_replace_count)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            if self.src_registry == self.dest_registry and target == name:
                raise ValueError(f"dest_namespace: {name!r} would be copied onto itself")
        if (
            self.src_registry == self.dest_registry
            and not self.dest_namespace
            and self.dest_namespace_replace_count <= 0
        ):
            raise ValueError(
                f"dest_namespace: source and destination are both registry {self.src_registry!r} "
                "with the same namespace, so every repository would be copied onto itself"
            )
        return self


class Config(_Model):
    version: Literal[1]
    registries: list[Registry] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list)
    # The retention of the policies in this file, for each field a policy does not set itself.
    retention: Retention | None = None

    @model_validator(mode="after")
    def _cross_references(self) -> Self:
        problems: list[str] = []
        seen: set[str] = set()
        for i, registry in enumerate(self.registries):
            if registry.name in seen:
                problems.append(f"registries[{i}].name: duplicate registry name {registry.name!r}")
            seen.add(registry.name)
        policy_names: set[str] = set()
        for i, policy in enumerate(self.policies):
            where = f"policies[{i}] ({policy.name!r})"
            if policy.name in policy_names:
                problems.append(f"{where}.name: duplicate policy name {policy.name!r}")
            policy_names.add(policy.name)
            # Whether src_registry/dest_registry exist is the store's question: a policy-only
            # file may use registries applied earlier (Store.apply checks file and store).
            if self.retention is not None:
                try:
                    policy.retention = _inherit(policy, self.retention)
                except ValidationError as exc:
                    reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    problems.append(f"{where}.retention: {reason}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _inherit(policy: Policy, default: Retention) -> Retention:
    """The file's retention with whatever the policy sets itself on top, field by field."""
    own = policy.retention.model_dump(include=policy.retention.model_fields_set) \
        if "retention" in policy.model_fields_set else {}
    return Retention.model_validate(default.model_dump() | own)


def _location(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def parse_config(data: object) -> Config:
    """Validate a loaded config file; every problem becomes one ConfigError naming its fields."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        lines = []
        for error in errors:
            message = error["msg"].removeprefix("Value error, ")
            where = _location(error["loc"])
            lines.append(f"{where}: {message}" if where else message)
        problem = ConfigError("; ".join(lines))
        # Set after construction: the lines already name their fields.
        problem.field = _location(errors[0]["loc"]) or None
        raise problem from None
