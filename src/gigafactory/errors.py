"""Typed errors. Each message says what to change; the CLI prints it as one line."""


class GigafactoryError(Exception):
    """Base class for every error a user can cause and fix."""


class SpecError(GigafactoryError, ValueError):
    """A spec field has a value that cannot be used.

    ``field`` names the offending field so callers (CLI, API) can point at it.
    """

    def __init__(self, spec: str, field: str, message: str):
        self.spec = spec
        self.field = field
        super().__init__(f"{spec}.{field}: {message}")


class UnknownPresetError(GigafactoryError, KeyError):
    """A preset name is not in the catalog and is not a readable YAML file."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind = kind
        self.name = name
        self.known = known
        super().__init__(name)

    def __str__(self) -> str:
        return (
            f"unknown {self.kind} '{self.name}'; known: {', '.join(self.known)} "
            f"(or pass the path of a YAML file)"
        )


class LayoutError(GigafactoryError, ValueError):
    """A parallel layout cannot run this model on this many GPUs."""


class OutputPathError(GigafactoryError, ValueError):
    """A file the user asked for (a plot, a report) cannot be written there."""
