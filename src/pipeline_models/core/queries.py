r"""Named SQL, loaded from a package's ``sql/*.sql`` through importlib.resources.

Each block starts with ``-- name: <name>``; the comment lines after it document the query
and its parameters. Code refers to queries by name and never builds SQL from values.
A mutant of the pipeline replaces a query by name (:meth:`Queries.replace`).

>>> parsed = Queries.parse("-- name: one\n-- the number one\nSELECT 1;")
>>> parsed["one"].sql, parsed["one"].doc
('SELECT 1', 'the number one')
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    doc: str

    def __str__(self) -> str:
        return self.sql


class Queries(Mapping[str, Query]):
    """An immutable set of named queries."""

    def __init__(self, queries: Mapping[str, Query]) -> None:
        self._queries = dict(queries)

    @classmethod
    def parse(cls, text: str) -> Queries:
        matches = list(_NAME.finditer(text))
        found: dict[str, Query] = {}
        for match, following in zip(matches, [*matches[1:], None], strict=True):
            end = following.start() if following else len(text)
            body = text[match.end() : end].strip("\n")
            doc_lines: list[str] = []
            sql_lines: list[str] = []
            for line in body.splitlines():
                if not sql_lines and line.startswith("--"):
                    doc_lines.append(line.removeprefix("--").strip())
                else:
                    sql_lines.append(line)
            name = match["name"]
            if name in found:
                raise ValueError(f"query {name!r} is defined twice")
            sql = "\n".join(sql_lines).strip().rstrip(";").strip()
            if not sql:
                raise ValueError(f"query {name!r} has no SQL")
            found[name] = Query(name, sql, "\n".join(doc_lines))
        return cls(found)

    @classmethod
    def load(cls, *files: str, package: str = "pipeline_models") -> Queries:
        """The queries of ``files`` in ``package``'s ``sql`` folder."""
        folder = resources.files(package) / "sql"
        merged: dict[str, Query] = {}
        for file in files:
            for name, query in cls.parse((folder / file).read_text("utf-8")).items():
                if name in merged:
                    raise ValueError(f"query {name!r} is defined in two files")
                merged[name] = query
        return cls(merged)

    def replace(self, **sql: str) -> Queries:
        """A copy with some queries' SQL replaced; unknown names are refused."""
        unknown = sorted(set(sql) - set(self._queries))
        if unknown:
            raise KeyError(f"no such queries: {', '.join(unknown)}; known: {', '.join(self)}")
        updated = dict(self._queries)
        for name, text in sql.items():
            updated[name] = Query(name, text.strip().rstrip(";"), updated[name].doc + " (replaced)")
        return Queries(updated)

    def __getitem__(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r}; known: {', '.join(self)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._queries))

    def __len__(self) -> int:
        return len(self._queries)


__all__ = ["Queries", "Query"]
