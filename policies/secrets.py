"""How a registry's secrets (its credential's ``access_secret``, its webhook's ``secret``) are kept in
the store, and turned back into the real secret.

The config file gives one of three forms; the store keeps:

    literal                   ``enc:v1:<Fernet token>``, encrypted with the regflow key
    ``${ENV_VAR}``            the reference text itself; the variable is read when needed
    ``prefect-secret:NAME``   the reference text itself; the Prefect Secret block is loaded when needed

The key is ``$REGFLOW_SECRET_KEY`` (a Fernet key, or any passphrase, derived into one), else
``<regflow home>/secret.key``, generated on first use with mode 0600.

No function here puts a secret, or the key, into an exception message, a repr or a log line.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import stat
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Final, Literal

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pydantic import SecretStr

from adapters.errors import ConfigError
from policies.home import regflow_home
from policies.models import PREFECT_SECRET_PREFIX

SECRET_KEY_ENV: Final = "REGFLOW_SECRET_KEY"
KEY_FILE_NAME: Final = "secret.key"
SEALED_PREFIX: Final = "enc:v1:"
MASK: Final = "********"

# A fixed salt, so that the same passphrase gives the same key on every host and worker that reads
# the shared store without any other state to hand around. A per-installation salt would guard
# against tables precomputed across many installations, which matters little for a key only an
# operator sets; the iteration count is what slows guessing, and it is OWASP's 2023 figure for
# PBKDF2-SHA256. Changing either value makes every stored secret undecryptable.
KDF_SALT: Final = b"regflow/REGFLOW_SECRET_KEY/v1"
KDF_ITERATIONS: Final = 600_000

_ENV_REF_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

SourceKind = Literal["encrypted", "env", "prefect-secret", "literal"]


def source_of(stored: str) -> tuple[SourceKind, str]:
    """What kind of secret text this is, and the variable or block name for references."""
    env = _ENV_REF_RE.fullmatch(stored)
    if env:
        return "env", env.group(1)
    if stored.startswith(PREFECT_SECRET_PREFIX):
        return "prefect-secret", stored[len(PREFECT_SECRET_PREFIX) :]
    if stored.startswith(SEALED_PREFIX):
        return "encrypted", ""
    return "literal", ""


def source_label(stored: str) -> str:
    """Where a secret comes from, safe to show: ``encrypted``, ``env:NAME``, ``prefect-secret:NAME``."""
    kind, name = source_of(stored)
    return f"{kind}:{name}" if name else kind


def seal(secret: SecretStr) -> str:
    """The text to store for ``secret``: references as they are, literals encrypted.

    Text already sealed with the current key passes through unchanged, so a registry read back
    from the store can be applied again; sealed text the key cannot decrypt is refused.
    """
    text = secret.get_secret_value()
    kind, _ = source_of(text)
    if kind in ("env", "prefect-secret"):
        return text
    fernet = _fernet()
    if kind == "encrypted":
        if _decrypt(fernet, text) is None:
            # Almost surely text sealed under another key, not a password that happens to look so.
            raise ConfigError(
                f"the secret is sealed text ({SEALED_PREFIX}...) that the key from {_key_origin()} "
                "cannot decrypt; write the secret itself or a reference",
                field="access_secret",
            )
        return text
    return SEALED_PREFIX + fernet.encrypt(text.encode()).decode("ascii")


def resolve(stored: str) -> SecretStr:
    """The real secret behind stored text: decrypted, read from the environment or from Prefect."""
    kind, name = source_of(stored)
    if kind == "env":
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"environment variable {name} is not set (or is empty)", field="access_secret")
        return SecretStr(value)
    if kind == "prefect-secret":
        return _prefect_secret(name)
    if kind == "encrypted":
        plain = _decrypt(_fernet(), stored)
        if plain is None:
            raise ConfigError(
                f"cannot decrypt the stored secret with the key from {_key_origin()} "
                f"({SECRET_KEY_ENV} changed?)",
                field="access_secret",
            )
        return SecretStr(plain)
    raise ConfigError("the stored secret is neither encrypted nor a reference", field="access_secret")


def matches(stored: str, secret: SecretStr) -> bool:
    """Whether ``secret`` (as written in a config file) is what ``stored`` keeps.

    Compares plaintexts, not ciphertexts: Fernet tokens differ on every encryption. Stored text
    the current key cannot decrypt never matches, so re-applying re-encrypts it with that key.
    """
    text = secret.get_secret_value()
    stored_kind, _ = source_of(stored)
    if stored_kind != "encrypted":
        return hmac.compare_digest(stored.encode(), text.encode())
    fernet = _fernet()
    plain = _decrypt(fernet, stored)
    if plain is None:
        return False
    if source_of(text)[0] == "encrypted":
        text = _decrypt(fernet, text) or text
    return hmac.compare_digest(plain.encode(), text.encode())


def _decrypt(fernet: Fernet, stored: str) -> str | None:
    try:
        return fernet.decrypt(stored[len(SEALED_PREFIX) :].encode("ascii")).decode()
    except (InvalidToken, UnicodeError):
        return None


def _prefect_secret(name: str) -> SecretStr:
    # Imported here: importing prefect takes about a second, and most commands never need it.
    from prefect.blocks.system import Secret

    try:
        # _sync=True: inside an async flow or task, Block.load would otherwise return a coroutine.
        block = Secret.load(name, _sync=True)  # type: ignore[call-arg]
        value = block.get() if isinstance(block, Secret) else None
    except Exception as exc:
        raise ConfigError(
            f"cannot load the Prefect Secret block {name!r}: {type(exc).__name__}: {str(exc)[:200]}",
            field="access_secret",
        ) from None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"the Prefect Secret block {name!r} does not hold a non-empty string",
                          field="access_secret")
    return SecretStr(value)


# ------------------------------------------------------------------------------------------ the key
def key_file() -> Path:
    return regflow_home() / KEY_FILE_NAME


def _key_origin() -> str:
    return SECRET_KEY_ENV if os.environ.get(SECRET_KEY_ENV) else str(key_file())


def _fernet() -> Fernet:
    configured = os.environ.get(SECRET_KEY_ENV)
    if configured:
        try:
            return Fernet(configured.encode())
        except ValueError:
            return Fernet(_derive_key(configured))
    path = key_file()
    if not path.exists():
        _create_key_file(path)
    return Fernet(_read_key_file(path))


@lru_cache(maxsize=4)
def _derive_key(passphrase: str) -> bytes:
    # Cached: the derivation is deliberately slow, and every seal and resolve needs the key.
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=KDF_SALT, iterations=KDF_ITERATIONS)
    return base64.urlsafe_b64encode(kdf.derive(passphrase.encode()))


def _create_key_file(path: Path) -> None:
    create_private_file_once(path, Fernet.generate_key() + b"\n")


def create_private_file_once(path: Path, content: bytes) -> None:
    """Write a new secret file (mode 0600) so that no reader ever sees a partial file and none
    is overwritten: when two processes race, the first file wins and both use it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # link, not rename: an existing file is kept
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the key file {path} is accessible to group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run `chmod 600 {path}` and rotate the registry secrets if others may have read it",
                field=SECRET_KEY_ENV,
            )
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}", field=SECRET_KEY_ENV) from None
    try:
        Fernet(key)
    except ValueError:
        raise ConfigError(f"the key file {path} does not hold a Fernet key", field=SECRET_KEY_ENV) from None
    return key
