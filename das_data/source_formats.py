"""The two small parsers the domain builders need: front matter of licensedcode files, and OBO stanzas."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


def parse_front_matter(text: str) -> tuple[dict[str, str], str]:
    """Split `---\\nkey: value\\n...\\n---\\nbody` into its top-level scalar fields and the body.

    Only top-level `key: value` lines are kept (quotes around a value are removed); lists and block
    scalars (indented lines, a value of `|` or `>`) are skipped. That is all the licensedcode files need.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not lines or lines[0].strip() != "---":
        raise ValueError("no front matter: the text does not start with a '---' line")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise ValueError("front matter is not closed by a '---' line") from None
    fields: dict[str, str] = {}
    for line in lines[1:end]:
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):(?:\s+(.*))?$", line)
        if not match:
            continue
        value = (match[2] or "").strip()
        if value in ("|", ">", "|-", ">-", "|+", ">+"):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if value:
            fields[match[1]] = value
    return fields, "\n".join(lines[end + 1:]).strip("\n")


@dataclass
class OboTerm:
    id: str
    name: str = ""
    definition: str = ""
    comment: str = ""
    parents: list[str] = field(default_factory=list)  # is_a targets
    obsolete: bool = False


def parse_obo(text: str) -> tuple[dict[str, str], dict[str, OboTerm]]:
    """The header tags (first value of each) and the [Term] stanzas of an OBO 1.2 file, by id."""
    header: dict[str, str] = {}
    terms: dict[str, OboTerm] = {}
    stanza: str | None = None
    term: OboTerm | None = None
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line or line.startswith("!"):
            continue
        if line.startswith("[") and line.endswith("]"):
            stanza, term = line, None
            continue
        tag, sep, value = line.partition(":")
        if not sep:
            continue
        tag, value = tag.strip(), value.strip()
        if stanza is None:
            header.setdefault(tag, value)
        elif stanza != "[Term]":
            continue
        elif tag == "id":
            term = terms.setdefault(value, OboTerm(id=value))
        elif term is None:
            raise ValueError(f"a [Term] stanza has {tag!r} before its id")
        elif tag == "name":
            term.name = value
        elif tag == "def":
            term.definition = _obo_quoted(value)
        elif tag == "comment":
            term.comment = value
        elif tag == "is_a":
            term.parents.append(value.split()[0])
        elif tag == "is_obsolete":
            term.obsolete = value.lower() == "true"
    return header, terms


def _obo_quoted(value: str) -> str:
    """The text of an OBO quoted string `"..." [refs]`, escapes resolved."""
    if not value.startswith('"'):
        return value
    out, i = [], 1
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append(" " if nxt in "ntW" else nxt)
            i += 2
            continue
        if c == '"':
            break
        out.append(c)
        i += 1
    return "".join(out)
