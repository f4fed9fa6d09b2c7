"""One error hierarchy for the model package.

The worker maps these to job error codes in one place, so every failure the model can explain has its own type
and a message a user can act on (which file is missing, which keys do not match).
"""

from __future__ import annotations

from collections.abc import Sequence

# Long key listings are cut to this many entries per section; the count of the rest is still reported.
MAX_LISTED = 20


class ModelError(Exception):
    """Base class of every error raised on purpose by `model/`."""


class InvalidInputError(ModelError, ValueError):
    """The caller gave an image or option the model cannot work with (wrong shape, dtype, range, size)."""


class CanceledError(ModelError):
    """The caller asked to stop (cancel hook returned True); raised at the next step boundary."""


class OutOfMemoryError(ModelError):
    """The device ran out of memory for this request."""


class WeightsMissingError(ModelError, FileNotFoundError):
    """Weight files needed by the requested version/task are not on disk."""

    def __init__(
        self, missing: Sequence[str], weights_dir: str | None = None, hint: str | None = None
    ) -> None:
        self.missing = list(missing)
        self.weights_dir = weights_dir
        self.hint = hint
        where = f" in {weights_dir}" if weights_dir else ""
        lines = [f"{len(self.missing)} weight file(s) missing{where}:"]
        lines += [f"  - {name}" for name in self.missing]
        lines.append(hint or "Download them with: python -m model download --version <v1|v2|v2.1>")
        super().__init__("\n".join(lines))


class CheckpointMismatchError(ModelError):
    """A checkpoint does not fit the module built for it (strict loading failed)."""

    def __init__(
        self,
        what: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        shape_mismatches: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        self.what = what
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        # (key, shape in checkpoint, shape in module)
        self.shape_mismatches = [(k, tuple(a), tuple(b)) for k, a, b in shape_mismatches]
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [f"checkpoint does not match {self.what}:"]
        lines += _section("missing keys", self.missing)
        lines += _section("unexpected keys", self.unexpected)
        lines += _section(
            "shape mismatches (checkpoint vs model)",
            [f"{k}: {list(a)} vs {list(b)}" for k, a, b in self.shape_mismatches],
        )
        return "\n".join(lines)


def _section(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    lines = [f"  {len(items)} {title}:"]
    lines += [f"    {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"    ... and {len(items) - MAX_LISTED} more")
    return lines
