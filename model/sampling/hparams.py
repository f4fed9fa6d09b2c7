"""The EDM solvers' hyper-parameters, with upstream DiffBIR's `inference.py` defaults.

Upstream passes each solver only the subset its k-diffusion function takes (see
`registry.SAMPLERS[name].hparams`); the others are accepted and ignored, as there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from model.errors import InvalidInputError

#: lms integrates a Lagrange polynomial through the last `order` derivatives; k-diffusion's own default is 4,
#: higher orders only add round-off on the ~10-step schedules DiffBIR uses.
MAX_LMS_ORDER = 4


@dataclass(frozen=True)
class SamplerParams:
    """Churn (`s_churn`, `s_tmin`, `s_tmax`, `s_noise`; Karras et al. 2022, Alg. 2), ancestral / SDE noise
    (`eta`, `s_noise`) and the lms order. Defaults: upstream inference.py."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 300.0
    s_noise: float = 1.0
    eta: float = 1.0
    order: int = 1

    def __post_init__(self) -> None:
        values = asdict(self)
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"sampler parameter {name} must be a finite number, got {value!r}")
        for name in ("s_churn", "s_tmin", "s_noise", "eta"):
            if values[name] < 0:
                raise InvalidInputError(f"sampler parameter {name} must be >= 0, got {values[name]}")
        if self.s_tmax < self.s_tmin:
            raise InvalidInputError(f"s_tmax ({self.s_tmax}) must be >= s_tmin ({self.s_tmin})")
        if int(self.order) != self.order or not 1 <= self.order <= MAX_LMS_ORDER:
            raise InvalidInputError(f"order must be an integer in [1, {MAX_LMS_ORDER}], got {self.order}")
