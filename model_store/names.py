"""Validation of everything that becomes part of a path or key in the store (no traversal)."""

from __future__ import annotations

import re

VERSION_RE = re.compile(r"^v\d{4,9}$")
DOMAIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidName(ValueError):
    """A version id, domain, digest or file name that the store refuses."""


def version_id(value: str) -> str:
    if not isinstance(value, str) or not VERSION_RE.fullmatch(value):
        raise InvalidName(f"invalid version id {value!r}: expected 'v' and 4+ digits, such as v0002")
    return value


def format_version(number: int) -> str:
    return f"v{number:04d}"


def version_number(value: str) -> int:
    return int(version_id(value)[1:])


def domain_name(value: str) -> str:
    if not isinstance(value, str) or not DOMAIN_RE.fullmatch(value) or ".." in value:
        raise InvalidName(f"invalid domain name {value!r}: use 1-64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return value


def digest(value: str) -> str:
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        raise InvalidName(f"invalid sha256 digest {value!r}: expected 64 lowercase hex characters")
    return value


def file_name(value: str) -> str:
    if not isinstance(value, str) or not FILE_RE.fullmatch(value) or ".." in value:
        raise InvalidName(f"invalid file name {value!r} in a version (no folders, no '..')")
    return value
