"""Route table: exact paths by dictionary lookup, then a few patterns (`{name}` segments, `{name:path}` tails)."""

from __future__ import annotations

import re
from typing import Any

from modelworks.errors import NotFound


class MethodNotAllowed(NotFound):
    status = 405
    code = "method_not_allowed"


class Router:
    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Any]] = {}
        self.patterns: list[tuple[re.Pattern, dict[str, Any]]] = []
        self._pattern_tables: dict[str, dict[str, Any]] = {}

    def add(self, template: str, endpoint: Any, methods: tuple[str, ...] = ("POST",)) -> None:
        if "{" not in template:
            table = self.exact.setdefault(template, {})
        elif template in self._pattern_tables:
            table = self._pattern_tables[template]
        else:
            regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", template)
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
            table = self._pattern_tables[template] = {}
            self.patterns.append((re.compile(f"^{regex}$"), table))
        for method in methods:
            table[method] = endpoint

    def match(self, method: str, path: str) -> tuple[Any, dict[str, str]]:
        table = self.exact.get(path)
        params: dict[str, str] = {}
        if table is None:
            for pattern, candidate in self.patterns:
                found = pattern.match(path)
                if found:
                    table, params = candidate, found.groupdict()
                    break
        if table is None:
            raise NotFound(f"Unknown request URL: {method} {path}.", code="unknown_url")
        endpoint = table.get(method)
        if endpoint is None:
            raise MethodNotAllowed(f"Method {method} is not allowed for {path}.")
        return endpoint, params
