"""Harbor's list parameters: ``q`` (``k=v`` exact, ``k=~v`` fuzzy, comma-separated), ``sort``
(``a,-b``), ``page``/``page_size``, answered with ``X-Total-Count`` and a ``Link`` header."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from pydantic import BaseModel
from starlette.datastructures import QueryParams

from deployments.harbor_api.errors import HarborError

DEFAULT_PAGE_SIZE: Final = 10
# Harbor's document caps page_size here; a bigger page would be one slow answer.
MAX_PAGE_SIZE: Final = 100


class Page(BaseModel):
    items: list[dict[str, Any]]
    headers: dict[str, str]


def _number(params: QueryParams, name: str, default: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise HarborError(400, f"{name}: {text!r} is not a whole number") from None


def parse_query(text: str, keys: Sequence[str]) -> list[tuple[str, str, bool]]:
    """``q`` as (key, value, fuzzy) terms; each must be ``k=v`` or ``k=~v`` on a known key."""
    terms: list[tuple[str, str, bool]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarborError(400, f"q: {item!r} is not k=v or k=~v")
        if key not in keys:
            raise HarborError(400, f"q: cannot query by {key!r} (only by {', '.join(keys)})")
        fuzzy = value.startswith("~")
        value = value[1:] if fuzzy else value
        if value[:1] in "[{(" and value:
            raise HarborError(400, f"q: {item!r}: ranges and lists are not supported, only k=v and k=~v")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        terms.append((key, value, fuzzy))
    return terms


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _matches(item: Mapping[str, Any], terms: list[tuple[str, str, bool]]) -> bool:
    for key, value, fuzzy in terms:
        have = _text(item.get(key, ""))
        if not (value in have if fuzzy else have == value):
            return False
    return True


def _sorted(items: list[dict[str, Any]], sort: str, keys: Sequence[str]) -> list[dict[str, Any]]:
    fields = [f.strip() for f in sort.split(",") if f.strip()]
    for field in reversed(fields):  # stable sorts, last key first
        descending = field.startswith("-")
        name = field.lstrip("-")
        if name not in keys:
            raise HarborError(400, f"sort: cannot sort by {name!r} (only by {', '.join(keys)})")
        items = sorted(items, key=lambda item: (item.get(name) is None, item.get(name) or ""),
                       reverse=descending)
    return items


def paginate(items: list[dict[str, Any]], params: QueryParams, path: str, *,
             query_keys: Sequence[str], sort_keys: Sequence[str], default_sort: str = "") -> Page:
    """Filter, sort and cut ``items`` (sorted by ``default_sort``, else by id, unless ``sort``
    says otherwise)."""
    page = max(_number(params, "page", 1), 1)
    size = _number(params, "page_size", DEFAULT_PAGE_SIZE)
    if size > MAX_PAGE_SIZE:
        raise HarborError(422, f"page_size in query should be less than or equal to {MAX_PAGE_SIZE}")
    size = size if size > 0 else DEFAULT_PAGE_SIZE
    terms = parse_query(params.get("q", ""), query_keys)
    # Harbor's deprecated ``name`` parameter: a fuzzy match on the name.
    if params.get("name"):
        terms.append(("name", params["name"], True))
    chosen = [item for item in items if _matches(item, terms)]
    chosen = _sorted(sorted(chosen, key=lambda item: item["id"]), params.get("sort") or default_sort,
                     sort_keys)
    total = len(chosen)
    headers = {"X-Total-Count": str(total)}
    links = []
    kept = {k: v for k, v in params.items() if k not in ("page", "page_size")}
    if page > 1 and total:
        links.append(_link(path, kept, min(page - 1, (total + size - 1) // size), size, "prev"))
    if page * size < total:
        links.append(_link(path, kept, page + 1, size, "next"))
    if links:
        headers["Link"] = " , ".join(links)
    return Page(items=chosen[(page - 1) * size : page * size], headers=headers)


def _link(path: str, kept: Mapping[str, str], page: int, size: int, rel: str) -> str:
    query = urlencode({**kept, "page": page, "page_size": size})
    return f'<{path}?{query}>; rel="{rel}"'
