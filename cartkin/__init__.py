"""cartkin: population pharmacology of CAR-T cell therapy in JAX."""

import importlib.metadata

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from ._models import ClosedFormModel as ClosedFormModel  # noqa: E402
from ._models import Model as Model  # noqa: E402
from ._models import ODEModel as ODEModel  # noqa: E402
from ._models import Output as Output  # noqa: E402
from ._models import Param as Param  # noqa: E402
from ._models import Stein2019 as Stein2019  # noqa: E402
from ._models import Stein2019ODE as Stein2019ODE  # noqa: E402
from ._regimen import Dose as Dose  # noqa: E402
from ._regimen import Intervention as Intervention  # noqa: E402
from ._regimen import Regimen as Regimen  # noqa: E402
from ._simulate import SimResult as SimResult  # noqa: E402
from ._simulate import simulate as simulate  # noqa: E402
from ._solve import Status as Status  # noqa: E402

try:
    __version__ = importlib.metadata.version("cartkin")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0+unknown"
