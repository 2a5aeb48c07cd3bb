"""How settings read their values from the environment's strings: counts, comma lists and API keys."""

from __future__ import annotations


def count(value: object) -> object:
    """Accept `40e6` for a count (a float spelling of an integer), not only `40000000`."""
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            return value  # let pydantic report it
    return value


def split_csv(value: object) -> object:
    """Accept `a,b,c` (the deployment files' form) as well as a list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def api_key_list(value: object, bulk: bool = False) -> object:
    """`SEGMENT_API_KEYS` (or `SEGMENT_BULK_API_KEYS`, `bulk`) as a list, each key once. A value that holds nothing
    but commas and spaces (`${KEY},` with KEY unset, a Secret holding a space) is refused: it would turn
    authentication off (or the bulk keys) without a word; only an empty value does."""
    keys = split_csv(value)
    if isinstance(value, str) and value and not keys:
        empty = "for no offline jobs' keys" if bulk else "to turn authentication off"
        raise ValueError(f"holds no key (only commas or spaces): set it empty {empty}")
    return list(dict.fromkeys(keys)) if isinstance(keys, list) else keys


def header_safe_keys(keys: list[str]) -> list[str]:
    """`keys`, each printable ASCII. A key is sent in a header: HTTP carries Latin-1 there, clients send UTF-8,
    and the Python client takes printable ASCII only, so another key could never be matched as written."""
    bad = [n for n, key in enumerate(keys, 1) if not (key.isascii() and key.isprintable())]
    if bad:
        raise ValueError(f"key {bad[0]} is not printable ASCII: a header cannot carry it as written")
    return keys
