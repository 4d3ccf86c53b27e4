"""Content digests (``algorithm:hex``) and streaming verification of bytes against them."""

from __future__ import annotations

import hashlib
from typing import Any, Final

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from adapters.errors import DigestMismatchError, InvalidReferenceError

# Hex length of each algorithm the OCI image spec registers; anything else is refused rather
# than passed through, because we could not verify it.
_HEX_LENGTHS: Final[dict[str, int]] = {"sha256": 64, "sha512": 128}
_LOWER_HEX: Final = frozenset("0123456789abcdef")


def _excerpt(value: str, limit: int = 80) -> str:
    """repr() of a value, shortened: bad input may be arbitrarily long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _reason(value: str) -> str | None:
    """Why ``value`` is not a digest, or None when it is one."""
    algorithm, sep, hex_part = value.partition(":")
    if not sep:
        return "expected 'algorithm:hex', e.g. 'sha256:' followed by 64 hex characters"
    expected_length = _HEX_LENGTHS.get(algorithm)
    if expected_length is None:
        return f"unsupported algorithm {_excerpt(algorithm, 20)} (only sha256 and sha512)"
    if len(hex_part) != expected_length:
        return f"{algorithm} needs {expected_length} hex characters, got {len(hex_part)}"
    if not _LOWER_HEX.issuperset(hex_part):
        if _LOWER_HEX.issuperset(hex_part.lower()):
            return "hex must be lowercase"
        return "the part after ':' is not hex"
    return None


class Digest(str):
    """A validated content digest: ``sha256:`` + 64 or ``sha512:`` + 128 lowercase hex characters.

    Being a ``str``, it goes anywhere a string does (URLs, headers, JSON) without conversion;
    being validated on construction, holding one means the text is well formed.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise InvalidReferenceError(f"a digest must be a string, got {type(value).__name__}")
        reason = _reason(value)
        if reason is not None:
            raise InvalidReferenceError(f"invalid digest {_excerpt(value)}: {reason}")
        return super().__new__(cls, value)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        """The sha256 digest of ``data``: the algorithm registries use for everything they name."""
        return cls("sha256:" + hashlib.sha256(data).hexdigest())

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        return self.partition(":")[2]

    def __repr__(self) -> str:
        return f"Digest({str.__repr__(self)})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls._from_pydantic,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def _from_pydantic(cls, value: str) -> Digest:
        # pydantic turns only ValueError into a ValidationError; anything else would escape
        # model validation as a bare exception.
        try:
            return cls(value)
        except InvalidReferenceError as exc:
            raise ValueError(str(exc)) from exc


class DigestVerifier:
    """Hashes bytes as they stream past and checks them against the digest they should have."""

    def __init__(self, expected: Digest, *, what: str = "blob") -> None:
        self.expected = Digest(expected)
        self._what = what
        self._hash = hashlib.new(self.expected.algorithm)
        self._size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._size += len(chunk)

    @property
    def size(self) -> int:
        """Bytes seen so far."""
        return self._size

    @property
    def actual(self) -> Digest:
        """The digest of the bytes seen so far, in the expected digest's algorithm."""
        return Digest(f"{self.expected.algorithm}:{self._hash.hexdigest()}")

    def verify(self) -> Digest:
        """Return the digest if the bytes match; raise DigestMismatchError if they do not."""
        actual = self.actual
        if actual != self.expected:
            raise DigestMismatchError(self.expected, actual, what=self._what)
        return actual
