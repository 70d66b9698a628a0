"""The numeric options of a planned run, checked in one place before any work is done.

``LayoutSpec`` checks a layout's degrees once they are all known; ``PlanOptions`` checks what a
user typed before the planner fills in defaults or searches: a 0 there means "default" or
"search" only where documented, never a degree or a batch of zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from gigafactory.spec._fields import positive_float, positive_int

SPEC = "plan"


@dataclass(frozen=True)
class PlanOptions:
    """What ``gigafactory plan`` (and ``compare``) were asked for.

    ``None`` for tp/pp means "search"; 0 for gpus, global_batch, seq and tokens means "the
    default" (whole cluster, 4,096 sequences, the model's context, 6e12 tokens).
    """

    gpus: int = 0
    tp: int | None = None
    pp: int | None = None
    vpp: int = 1
    cp: int = 1
    ep: int = 1
    global_batch: int = 0
    micro_batch: int = 1
    seq: int = 0
    tokens: float = 0.0
    checkpoint_s: float = 10.0
    restart_s: float = 300.0
    top: int = 5

    def __post_init__(self) -> None:
        for name in ("gpus", "global_batch", "seq"):
            positive_int(SPEC, name, getattr(self, name), minimum=0)
        for name in ("tp", "pp"):
            if getattr(self, name) is not None:
                positive_int(SPEC, name, getattr(self, name))
        for name in ("vpp", "cp", "ep", "micro_batch", "top"):
            positive_int(SPEC, name, getattr(self, name))
        positive_float(SPEC, "tokens", self.tokens, allow_zero=True)
        positive_float(SPEC, "checkpoint_s", self.checkpoint_s)
        positive_float(SPEC, "restart_s", self.restart_s, allow_zero=True)

    @property
    def searching(self) -> bool:
        """No degree given: search the layouts."""
        return self.tp is None and self.pp is None
