"""The one table the benchmarks print: item, figure, value, target, pass/miss."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    item: str
    figure: str
    value: str
    target: str  # "" when the figure is reported without a target
    passed: bool | None

    @property
    def verdict(self) -> str:
        return "" if self.passed is None else ("pass" if self.passed else "MISS")


def markdown(rows: list[Row]) -> str:
    lines = ["| item | figure | value | target | result |", "|---|---|---|---|---|"]
    lines += [f"| {r.item} | {r.figure} | {r.value} | {r.target} | {r.verdict} |" for r in rows]
    return "\n".join(lines)
