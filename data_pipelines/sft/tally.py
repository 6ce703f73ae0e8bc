"""What every SFT tool reports: a problem with its line number, and read / kept / rejected-by-reason counts."""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass(frozen=True)
class Problem:
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.detail}"


class Tally:
    """read / kept / rejected-by-reason, printable by the CLI; rejected problems keep their line numbers."""

    def __init__(self):
        self.kept = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.problems: list[Problem] = []

    def keep(self, count: int = 1) -> None:
        self.kept += count

    def reject(self, problem: Problem) -> None:
        self.rejected[problem.reason] += 1
        if len(self.problems) < 1000:  # the counts are exact; the details are a sample for humans
            self.problems.append(problem)

    @property
    def read(self) -> int:
        return self.kept + sum(self.rejected.values())

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "rejected": dict(sorted(self.rejected.items()))}

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        return f"read {self.read}, kept {self.kept}, rejected {sum(self.rejected.values())} ({reasons})"
