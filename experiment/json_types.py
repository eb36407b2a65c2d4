"""JSON documents as types: what `json.loads` returns and `json.dumps` writes (metadata.json, run records, answers).

Writers build plain dicts and lists; the read-only aliases are covariant (Mapping, Sequence), so a `dict[str, str]`
or a tuple of ints is a JSON value too. Readers narrow a decoded value with isinstance, or with the two helpers below
where a missing or malformed member means "none".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

JSONScalar: TypeAlias = str | int | float | bool | None
JSONValue: TypeAlias = JSONScalar | Sequence["JSONValue"] | Mapping[str, "JSONValue"]
JSONObject: TypeAlias = Mapping[str, JSONValue]
# A decoded document's object: what json.loads gives for {...}, before anything narrows its members.
JSONDict: TypeAlias = dict[str, JSONValue]


def as_object(value: JSONValue) -> JSONObject:
    """value when it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def as_array(value: JSONValue) -> Sequence[JSONValue]:
    """value when it is a JSON array (a list, not a string), else an empty one."""
    return value if isinstance(value, Sequence) and not isinstance(value, str) else []
