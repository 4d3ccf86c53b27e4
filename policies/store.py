"""The store of registries and policies, as applied from config files, and of the upload
sessions runs left open: SQLite or PostgreSQL.

Each row keeps a model's JSON with the registry's secrets (its credential's ``access_secret`` and its
webhook's ``secret``) in their sealed form (see policies.secrets), so nothing read from here ever
holds a plaintext secret; ``Store.endpoint`` and ``Store.webhook`` are the only places that resolve
them, for the code that needs them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, Self, TypeVar

import sqlmodel
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from sqlalchemy import BigInteger, DateTime, Engine, Text, UniqueConstraint, create_engine, delete, func, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import registry as mapper_registry
from sqlmodel import Session, SQLModel, select

from adapters import adapter_info, check_options
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError
from policies import secrets
from policies.filters import literal_names
from policies.home import DATABASE_URL_ENV, database_url
from policies.models import Config, Policy, Registry
from policies.namespace import check_path_rule, replace_namespace

PEM_MARK: Final = "-----BEGIN"
# Where a registry's spec holds a secret: (section, field); each is sealed, compared and masked alike.
SECRET_FIELDS: Final = (("credential", "access_secret"), ("webhook", "secret"))
# An upload session not advanced for this long is taken as gone and its row deleted: registries
# purge abandoned uploads on their own schedule (distribution: 7 days by default, others sooner),
# and asking about a purged one costs only a status request, so a day keeps the useful ones.
UPLOAD_SESSION_MAX_AGE: Final = timedelta(days=1)
# How long a change waits for another process's change to the SQLite file before giving up: an
# apply that seals secrets can take seconds, and the waiter has nothing better to do.
SQLITE_WAIT_SECONDS: Final = 30.0
# The PostgreSQL advisory lock that serializes changes to registries and policies: any fixed
# number no other user of the database takes (these are the bytes of "regflow!").
CHANGE_LOCK_KEY: Final = 0x7265_6766_6C6F_7721
# Keys looked up per query for run ids: SQLite allows 999 bound parameters in older builds.
RUN_ID_CHUNK: Final = 500


class _Table(SQLModel, registry=mapper_registry()):
    """Own metadata: creating our tables never creates, or collides with, anyone else's."""


class _Row(_Table):
    name: str = sqlmodel.Field(primary_key=True, max_length=63)
    spec: str = sqlmodel.Field(sa_type=Text)
    created_at: datetime = sqlmodel.Field(sa_type=DateTime(timezone=True))
    updated_at: datetime = sqlmodel.Field(sa_type=DateTime(timezone=True))


class RegistryRow(_Row, table=True):
    __tablename__ = "registries"


class PolicyRow(_Row, table=True):
    __tablename__ = "policies"


RowT = TypeVar("RowT", RegistryRow, PolicyRow)
Kind = Literal["registry", "policy"]


class ApiIdRow(_Table, table=True):
    """The integer id Harbor's API shows for a registry or policy name (deployments/harbor_api).

    Given once per name, at the change that creates it, and kept after a delete: the same name
    applied again gets its old id back, so scripts holding ids keep working across a
    ``apply --prune`` round trip, and an id never names anything else. A table of its own, so
    stores made before ids existed get it from ``create_all`` without a migration.
    """

    __tablename__ = "api_ids"
    __table_args__ = (UniqueConstraint("kind", "id"),)
    kind: str = sqlmodel.Field(primary_key=True, max_length=16)
    name: str = sqlmodel.Field(primary_key=True, max_length=63)
    id: int = sqlmodel.Field(sa_type=BigInteger)


class RunIdRow(_Table, table=True):
    """The integer id Harbor's API shows for an execution (a Prefect flow run, keyed by its UUID)
    or for one of its tasks (keyed ``<flow run UUID>/<source repository>``).

    Given when the API first shows the run or task and kept: Prefect's retention may prune the
    run later (its id then answers 404), but the id never names anything else.
    """

    __tablename__ = "api_run_ids"
    key: str = sqlmodel.Field(sa_type=Text, primary_key=True)
    id: int = sqlmodel.Field(sa_type=BigInteger, unique=True)


class NameTaken(ConfigError):
    """A create found the name already stored (the API answers 409, as Harbor does)."""


class UploadSessionRow(_Table, table=True):
    """A chunked upload left open on a target registry: one row per (target, repository, blob),
    written by the attempt that advanced it, read by whichever attempt, run or machine goes on."""

    __tablename__ = "upload_sessions"
    target: str = sqlmodel.Field(primary_key=True)  # the target registry's URL as configured
    repository: str = sqlmodel.Field(primary_key=True)
    digest: str = sqlmodel.Field(primary_key=True)
    location: str = sqlmodel.Field(sa_type=Text)
    offset: int = sqlmodel.Field(sa_type=BigInteger)
    updated_at: datetime = sqlmodel.Field(sa_type=DateTime(timezone=True))


class UploadSession(BaseModel):
    """Where an open upload stands: its next location and the bytes the registry acknowledged."""

    model_config = ConfigDict(frozen=True)

    location: str
    offset: int


class ApplyReport(BaseModel):
    """What an apply did, as ``registry NAME`` / ``policy NAME`` entries."""

    created: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


class ResolvedWebhook(BaseModel):
    """What the webhook receiver needs to check a registry's notifications, secret resolved."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    registry: str
    kind: Literal["distribution", "harbor", "dockerhub"]
    auth: Literal["bearer", "hmac"]
    secret: SecretStr


class Store:
    """Registries and policies in the database at ``url`` (default: ``database_url()``)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = _driver_url(url or database_url())
        try:
            on_sqlite = self.url.get_backend_name() == "sqlite"
            self._engine: Engine = create_engine(
                self.url, connect_args={"timeout": SQLITE_WAIT_SECONDS} if on_sqlite else {})
        except ImportError:
            raise ConfigError(
                f"{self._safe_url()} needs the PostgreSQL driver: install regflow[postgres] (psycopg)",
                field=DATABASE_URL_ENV,
            ) from None
        self._ready = False

    def __repr__(self) -> str:
        return f"Store({self._safe_url()!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    # ------------------------------------------------------------------------------- apply
    def apply(self, config: Config, *, prune: bool = False, only_new: bool = False) -> ApplyReport:
        """Make the store hold what ``config`` says, in one transaction, after checking all of it.

        With ``prune``, registries and policies missing from ``config`` are deleted too; with
        ``only_new``, a name already stored is refused (NameTaken) and nothing changes.
        """
        for i, registry in enumerate(config.registries):
            _check_type(registry, f"registries[{i}]")
        report = ApplyReport()
        now = datetime.now(UTC)
        with self._changing() as session:
            old_registries = _rows(session, RegistryRow)
            old_policies = _rows(session, PolicyRow)
            if only_new:
                _check_new(config, old_registries, old_policies)
            _check_policies(config, old_registries, prune)
            registry_specs = [
                (r.name, _registry_spec(r, old_registries.get(r.name), f"registries[{i}]"))
                for i, r in enumerate(config.registries)
            ]
            policy_specs = [(p.name, p.model_dump(mode="json")) for p in config.policies]
            # Everything is checked and sealed: only writes from here on.
            for name, spec in registry_specs:
                _put(session, RegistryRow, old_registries.get(name), name, spec, now, report)
            for name, spec in policy_specs:
                _put(session, PolicyRow, old_policies.get(name), name, spec, now, report)
            if prune:
                _prune(session, old_policies, {p.name for p in config.policies}, "policy", report)
                _prune(session, old_registries, {r.name for r in config.registries}, "registry", report)
            session.flush()
            _number(session, RegistryRow)
            _number(session, PolicyRow)
        return report

    # -------------------------------------------------------------------------------- reads
    def registries(self) -> list[Registry]:
        """Every registry, by name, each carrying its sealed secret, never the plaintext."""
        with self._transaction() as session:
            return [_load(Registry, row) for row in _ordered(session, RegistryRow)]

    def registry(self, name: str) -> Registry:
        with self._transaction() as session:
            return _load(Registry, _get(session, RegistryRow, name))

    def policies(self) -> list[Policy]:
        with self._transaction() as session:
            return [_load(Policy, row) for row in _ordered(session, PolicyRow)]

    def policy(self, name: str) -> Policy:
        with self._transaction() as session:
            return _load(Policy, _get(session, PolicyRow, name))

    def endpoint(self, name: str) -> Endpoint:
        """How to reach registry ``name``, with its secret resolved and its CA bundle read."""
        registry = self.registry(name)
        username: str | None = None
        password: SecretStr | None = None
        if registry.credential is not None:
            username = registry.credential.access_key or None
            password = _resolve(registry.credential.access_secret, name, "credential.access_secret")
        return Endpoint(
            url=registry.url,
            username=username,
            password=password,
            insecure=registry.insecure,
            ca_certificate=_ca_text(registry.ca_certificate, name),
            options=registry.options,
        )

    def webhook(self, name: str) -> ResolvedWebhook | None:
        """How registry ``name`` authenticates its notifications, secret resolved; None if it sends none."""
        settings = self.registry(name).webhook
        if settings is None:
            return None
        return ResolvedWebhook(
            registry=name,
            kind=settings.kind,
            auth=settings.auth,
            secret=_resolve(settings.secret, name, "webhook.secret"),
        )

    @staticmethod
    def public_view(item: Registry | Policy) -> dict[str, Any]:
        return public_view(item)

    def api_ids(self, kind: Kind) -> dict[str, int]:
        """The API id of every stored registry (or policy), by name. Rows stored before ids
        existed get theirs here, oldest first, under the change lock like any other change."""
        table: type[RegistryRow] | type[PolicyRow] = RegistryRow if kind == "registry" else PolicyRow
        with self._transaction() as session:
            ids = _ids_of(session, table)
            stored = session.exec(select(func.count()).select_from(table)).one()
        if len(ids) == stored:
            return ids
        with self._changing() as session:
            _number(session, table)
            return _ids_of(session, table)

    def run_ids(self, keys: Sequence[str]) -> dict[str, int]:
        """The API id of each execution or task key, giving the missing ones the next free ids in
        the order given (under the change lock, so two processes never hand out the same id)."""
        wanted = list(dict.fromkeys(keys))
        with self._transaction() as session:
            known = _run_ids_of(session, wanted)
        if len(known) == len(wanted):
            return known
        with self._changing() as session:
            known = _run_ids_of(session, wanted)
            top = session.exec(select(func.max(RunIdRow.id))).one() or 0
            for offset, key in enumerate((k for k in wanted if k not in known), start=1):
                session.add(RunIdRow(key=key, id=top + offset))
                known[key] = top + offset
        return known

    def run_key(self, number: int) -> str | None:
        """The execution or task key an API id was given to; None for an id never given."""
        with self._transaction() as session:
            return session.exec(select(RunIdRow.key).where(RunIdRow.id == number)).first()

    def timestamps(self, kind: Kind) -> dict[str, tuple[datetime, datetime]]:
        """When each registry (or policy) was created and last changed, by name."""
        table: type[RegistryRow] | type[PolicyRow] = RegistryRow if kind == "registry" else PolicyRow
        with self._transaction() as session:
            return {row.name: (_aware(row.created_at), _aware(row.updated_at))
                    for row in session.exec(select(table))}

    # ------------------------------------------------------------------ deletes and switches
    def delete_policy(self, name: str) -> None:
        with self._changing() as session:
            session.delete(_get(session, PolicyRow, name))

    def delete_registry(self, name: str) -> None:
        """Delete registry ``name``, and with its row its sealed secret; refused while a policy
        uses it (Harbor's rule)."""
        with self._changing() as session:
            row = _get(session, RegistryRow, name)
            users = [p.name for p in _ordered(session, PolicyRow) if name in _registries_of(p)]
            if users:
                raise ConfigError(
                    f"registry {name!r} is used by policy {', '.join(map(repr, users))}: "
                    "delete that policy or point it at another registry first"
                )
            session.delete(row)

    def enable_policy(self, name: str) -> bool:
        """Enable policy ``name``; False if it already was."""
        return self._switch(name, enabled=True)

    def disable_policy(self, name: str) -> bool:
        """Disable policy ``name`` (no trigger starts it; see deployments.sync); False if it already was."""
        return self._switch(name, enabled=False)

    def _switch(self, name: str, *, enabled: bool) -> bool:
        with self._changing() as session:
            row = _get(session, PolicyRow, name)
            if _load(Policy, row).enabled == enabled:
                return False
            spec = json.loads(row.spec)
            spec["enabled"] = enabled
            row.spec = json.dumps(spec)
            row.updated_at = datetime.now(UTC)
            session.add(row)
            return True

    # ------------------------------------------------------------------------ upload sessions
    # One row each, written on its own (an upsert, not a read-modify-write of anything shared), so
    # runs to one registry from any number of processes or machines never drop each other's.
    def upload_session(self, target: str, repository: str, digest: str) -> UploadSession | None:
        """The open session for this blob, unless it is older than UPLOAD_SESSION_MAX_AGE."""
        with self._transaction() as session:
            row = session.get(UploadSessionRow, (target, repository, digest))
            if row is None or _aware(row.updated_at) < datetime.now(UTC) - UPLOAD_SESSION_MAX_AGE:
                return None
            return UploadSession(location=row.location, offset=row.offset)

    def save_upload_session(self, target: str, repository: str, digest: str, saved: UploadSession) -> None:
        values = {"target": target, "repository": repository, "digest": digest,
                  "location": saved.location, "offset": saved.offset, "updated_at": datetime.now(UTC)}
        dialect = postgresql if self.url.get_backend_name() == "postgresql" else sqlite
        upsert = dialect.insert(UploadSessionRow).values(**values)
        upsert = upsert.on_conflict_do_update(
            index_elements=["target", "repository", "digest"],
            set_={k: upsert.excluded[k] for k in ("location", "offset", "updated_at")})
        with self._transaction() as session:
            session.execute(upsert)

    def drop_upload_session(self, target: str, repository: str, digest: str) -> None:
        with self._transaction() as session:
            session.execute(delete(UploadSessionRow).where(
                UploadSessionRow.target == target,  # type: ignore[arg-type]
                UploadSessionRow.repository == repository,  # type: ignore[arg-type]
                UploadSessionRow.digest == digest))  # type: ignore[arg-type]

    def expire_upload_sessions(self) -> int:
        """Delete every session row older than UPLOAD_SESSION_MAX_AGE; returns how many."""
        cutoff = datetime.now(UTC) - UPLOAD_SESSION_MAX_AGE
        with self._transaction() as session:
            result = session.execute(delete(UploadSessionRow).where(
                UploadSessionRow.updated_at < cutoff))  # type: ignore[arg-type]
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------------ plumbing
    def _safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        self._prepare()
        with Session(self._engine) as session, session.begin():
            yield session

    @contextmanager
    def _changing(self) -> Iterator[Session]:
        """A transaction that changes registries or policies, one at a time across processes and
        machines: what it checked first (a registry no policy uses, the registries a policy names)
        still holds when it commits. Such changes are rare and quick, so waiting costs nothing."""
        with self._transaction() as session:
            if self.url.get_backend_name() == "sqlite":
                connection = session.connection()
                # A deleted row's bytes would otherwise stay in the file's free pages.
                connection.exec_driver_sql("PRAGMA secure_delete = ON")
                # Its driver would begin only at the first write, after the reads that checked it.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHANGE_LOCK_KEY})
            yield session

    def _prepare(self) -> None:
        if self._ready:
            return
        if self.url.get_backend_name() == "sqlite" and self.url.database not in (None, "", ":memory:"):
            _create_private_file(Path(str(self.url.database)))
        try:
            self._create_tables()
        except DBAPIError:
            # Another process created them first (two runs starting on a new store, or on one made
            # before a table was added): creation is one transaction, so now they are all there.
            try:
                self._create_tables()
            except DBAPIError as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                raise ConfigError(f"cannot open the database {self._safe_url()}: {reason}",
                                  field=DATABASE_URL_ENV) from None
        self._ready = True

    def _create_tables(self) -> None:
        """The missing tables, all or none: one transaction, which SQLite must be told to take
        before its first check (its driver would otherwise run each CREATE on its own)."""
        with self._engine.connect() as connection:
            if self.url.get_backend_name() == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            _Table.metadata.create_all(connection)
            connection.commit()


def public_view(item: Registry | Policy) -> dict[str, Any]:
    """``item`` for display: the secrets masked, and where each comes from instead."""
    data = item.model_dump(mode="json")
    if isinstance(item, Registry):
        for section, field, secret in _secrets_of(item):
            data[section][field] = secrets.MASK
            data[section]["source"] = secrets.source_label(secret.get_secret_value())
    return data


# ---------------------------------------------------------------------------------- helpers
def _driver_url(text: str) -> URL:
    try:
        url = make_url(text)
    except ArgumentError:
        # The text may hold a password: say what is wrong without repeating it.
        raise ConfigError("not a database URL such as sqlite:///path or postgresql+psycopg://host/db",
                          field=DATABASE_URL_ENV) from None
    # psycopg (3) is the driver we ship; SQLAlchemy's plain postgresql:// means psycopg2.
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _create_private_file(path: Path) -> None:
    # The database holds sealed secrets only, but nobody else needs to read even those.
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _bare(exc: ConfigError) -> str:
    """The message of ``exc`` without its field prefix, to re-raise it under a fuller field."""
    return exc.message.removeprefix(f"{exc.field}: ") if exc.field else exc.message


def _check_type(registry: Registry, where: str) -> None:
    try:
        adapter_info(registry.type)
    except ConfigError as exc:
        raise ConfigError(_bare(exc), field=f"{where}.type") from None
    try:
        check_options(registry.type, registry.options)
    except ConfigError as exc:
        raise ConfigError(_bare(exc), field=f"{where}.{exc.field}") from None


def _check_new(config: Config, old_registries: dict[str, RegistryRow],
               old_policies: dict[str, PolicyRow]) -> None:
    for i, registry in enumerate(config.registries):
        if registry.name in old_registries:
            raise NameTaken(f"a registry named {registry.name!r} already exists",
                            field=f"registries[{i}].name")
    for i, policy in enumerate(config.policies):
        if policy.name in old_policies:
            raise NameTaken(f"a policy named {policy.name!r} already exists", field=f"policies[{i}].name")


def _ids_of(session: Session, table: type[RegistryRow] | type[PolicyRow]) -> dict[str, int]:
    """API ids of the rows of ``table`` that exist now (kept ids of deleted names left out)."""
    query = select(ApiIdRow.name, ApiIdRow.id).join(table, table.name == ApiIdRow.name).where(  # type: ignore[arg-type]
        ApiIdRow.kind == _kind(table))
    return {name: number for name, number in session.exec(query).all()}


def _run_ids_of(session: Session, keys: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(keys), RUN_ID_CHUNK):
        chunk = keys[start:start + RUN_ID_CHUNK]
        query = select(RunIdRow.key, RunIdRow.id).where(RunIdRow.key.in_(chunk))  # type: ignore[attr-defined]
        found.update({key: number for key, number in session.exec(query).all()})
    return found


def _number(session: Session, table: type[RegistryRow] | type[PolicyRow]) -> None:
    """Give every row of ``table`` without an API id the next free one, oldest row first.
    Runs inside a change (the lock held), so two processes never hand out the same id."""
    kind = _kind(table)
    known = set(session.exec(select(ApiIdRow.name).where(ApiIdRow.kind == kind)).all())
    oldest_first = select(table).order_by(table.created_at, table.name)  # type: ignore[arg-type]
    missing = [row for row in session.exec(oldest_first)
               if row.name not in known]
    if not missing:
        return
    top = session.exec(select(func.max(ApiIdRow.id)).where(ApiIdRow.kind == kind)).one()
    for offset, row in enumerate(missing, start=1):
        session.add(ApiIdRow(kind=kind, name=row.name, id=(top or 0) + offset))


def _check_policies(config: Config, old_registries: dict[str, RegistryRow], prune: bool) -> None:
    """Every policy names registries that will exist, and its literal targets fit the path rule."""
    types = {r.name: r.type for r in config.registries}
    if not prune:
        for name, row in old_registries.items():
            types.setdefault(name, json.loads(row.spec)["type"])
    for i, policy in enumerate(config.policies):
        for side in ("src_registry", "dest_registry"):
            ref = getattr(policy, side)
            if ref in types:
                continue
            problem = (
                f"registry {ref!r} is not in the file, so prune would delete it, but this policy uses it"
                if ref in old_registries
                else f"{ref!r} is not a registry in this file or in the store"
            )
            raise ConfigError(problem, field=f"policies[{i}].{side}")
        _check_capabilities(policy, types[str(policy.src_registry)], f"policies[{i}]")
        _check_targets(policy, types[str(policy.dest_registry)], f"policies[{i}].dest_namespace")


def _check_capabilities(policy: Policy, src_type: str, where: str) -> None:
    """The source's adapter says which filters, resource types and triggers it can honour: a
    label filter on a registry without labels would otherwise select nothing, silently."""
    info = adapter_info(src_type)
    for j, f in enumerate(policy.filters):
        if f.type not in info.filters:
            raise ConfigError(f"registry type {src_type!r} does not support {f.type} filters "
                              f"(it supports: {', '.join(info.filters)})", field=f"{where}.filters[{j}].type")
        if f.type == "resource" and f.value not in info.resource_types:
            raise ConfigError(f"registry type {src_type!r} holds no {f.value!r} resources "
                              f"(it holds: {', '.join(info.resource_types)})",
                              field=f"{where}.filters[{j}].value")
    if policy.trigger.type not in info.triggers:
        raise ConfigError(f"registry type {src_type!r} does not support {policy.trigger.type} triggers "
                          f"(it supports: {', '.join(info.triggers)})", field=f"{where}.trigger.type")


def _check_targets(policy: Policy, dest_type: str, field: str) -> None:
    info = adapter_info(dest_type)
    if not info.can_be_target:
        raise ConfigError(f"registry type {dest_type!r} can only be a source", field=field.rsplit(".", 1)[0]
                          + ".dest_registry")
    for name in literal_names(policy.filters) or []:
        try:
            target = replace_namespace(name, policy.dest_namespace, policy.dest_namespace_replace_count)
            check_path_rule(target, info.min_path_components, info.max_path_components)
        except ConfigError as exc:
            raise ConfigError(_bare(exc), field=field) from None


def _secrets_of(registry: Registry) -> Iterator[tuple[str, str, SecretStr]]:
    """Each secret ``registry`` holds, as (section, field, secret)."""
    for section, field in SECRET_FIELDS:
        holder = getattr(registry, section)
        if holder is not None:
            yield section, field, getattr(holder, field)


def _registry_spec(registry: Registry, old: RegistryRow | None, where: str) -> dict[str, Any]:
    """The JSON to store: the model, with its secrets sealed (reusing old sealed text where equal)."""
    spec = registry.model_dump(mode="json")
    if registry.webhook is None:
        # Left out, as in rows stored before webhooks existed: re-applying those stays "unchanged".
        del spec["webhook"]
    if not registry.options:
        del spec["options"]  # likewise for rows stored before options existed
    old_spec = json.loads(old.spec) if old is not None else {}
    for section, field, secret in _secrets_of(registry):
        old_sealed = (old_spec.get(section) or {}).get(field)
        if old_sealed is not None and secrets.matches(old_sealed, secret):
            sealed = old_sealed
        else:
            try:
                sealed = secrets.seal(secret)
            except ConfigError as exc:
                raise ConfigError(_bare(exc), field=f"{where}.{section}.{field}") from None
        spec[section][field] = sealed
    return spec


def _resolve(stored: SecretStr, registry: str, field: str) -> SecretStr:
    """The real secret behind a stored one of ``registry``; errors name the registry and ``field``."""
    try:
        return secrets.resolve(stored.get_secret_value())
    except ConfigError as exc:
        raise ConfigError(f"registry {registry!r}: {_bare(exc)}", field=field) from None


def _registries_of(row: PolicyRow) -> set[str]:
    spec = json.loads(row.spec)
    return {spec.get("src_registry"), spec.get("dest_registry")} - {None}


def _rows(session: Session, table: type[RowT]) -> dict[str, RowT]:
    return {row.name: row for row in session.exec(select(table))}


def _ordered(session: Session, table: type[RowT]) -> Sequence[RowT]:
    return session.exec(select(table).order_by(table.name)).all()


def _kind(table: type[_Row]) -> Kind:
    return "registry" if table is RegistryRow else "policy"


def _get(session: Session, table: type[RowT], name: str) -> RowT:
    row = session.get(table, name)
    if row is None:
        raise ConfigError(f"no {_kind(table)} named {name!r}")
    return row


def _put(
    session: Session,
    table: type[RowT],
    row: RowT | None,
    name: str,
    spec: dict[str, Any],
    now: datetime,
    report: ApplyReport,
) -> None:
    entry = f"{_kind(table)} {name}"
    if row is None:
        session.add(table(name=name, spec=json.dumps(spec), created_at=now, updated_at=now))
        report.created.append(entry)
    elif json.loads(row.spec) == spec:
        report.unchanged.append(entry)
    else:
        row.spec = json.dumps(spec)
        row.updated_at = now
        session.add(row)
        report.updated.append(entry)


def _prune(session: Session, old: dict[str, RowT], keep: set[str], kind: str, report: ApplyReport) -> None:
    for name in sorted(old.keys() - keep):
        session.delete(old[name])
        report.deleted.append(f"{kind} {name}")


ModelT = TypeVar("ModelT", Registry, Policy)


def _load(model: type[ModelT], row: _Row) -> ModelT:
    try:
        return model.model_validate_json(row.spec)
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors(include_input=False, include_url=False))
        kind = model.__name__.lower()
        problem = f"the stored {kind} {row.name!r} no longer validates: {problems}; apply it again"
        raise ConfigError(problem) from None


def _ca_text(value: str | None, registry: str) -> str | None:
    """PEM text as given, or read from the file it names."""
    if value is None or PEM_MARK in value:
        return value
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"registry {registry!r}: cannot read the CA certificate file {path}: {reason}",
                          field="ca_certificate") from None
    if PEM_MARK not in text:
        raise ConfigError(f"registry {registry!r}: {path} holds no PEM certificate", field="ca_certificate")
    return text
