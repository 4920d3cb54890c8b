"""cartkin: population pharmacology of CAR-T cell therapy in JAX.

Models (one file each in ``cartkin/_models``), regimens, batched simulation, virtual
populations, population fits; datasets live in :mod:`cartkin.data`.
"""

import importlib.metadata

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from . import data as data  # noqa: E402
from ._estimate.fit import FitResult as FitResult  # noqa: E402
from ._estimate.fit import fit as fit  # noqa: E402
from ._likelihood import Endpoint as Endpoint  # noqa: E402
from ._likelihood import FitData as FitData  # noqa: E402
from ._likelihood import StatModel as StatModel  # noqa: E402
from ._models import Barros2021 as Barros2021  # noqa: E402
from ._models import ClosedFormModel as ClosedFormModel  # noqa: E402
from ._models import Hardiansyah2019 as Hardiansyah2019  # noqa: E402
from ._models import Kimmel2021 as Kimmel2021  # noqa: E402
from ._models import LisoCel as LisoCel  # noqa: E402
from ._models import LisoCelODE as LisoCelODE  # noqa: E402
from ._models import Model as Model  # noqa: E402
from ._models import ODEModel as ODEModel  # noqa: E402
from ._models import Output as Output  # noqa: E402
from ._models import Param as Param  # noqa: E402
from ._models import Stein2019 as Stein2019  # noqa: E402
from ._models import AntigenEscapeBALL as AntigenEscapeBALL  # noqa: E402
from ._models import ArmoredCAR as ArmoredCAR  # noqa: E402
from ._models import BCellAplasia as BCellAplasia  # noqa: E402
from ._models import LeonTriana2021BALL as LeonTriana2021BALL  # noqa: E402
from ._models import LeonTriana2021Solid as LeonTriana2021Solid  # noqa: E402
from ._models import MDSCSuppression as MDSCSuppression  # noqa: E402
from ._models import Stein2019ODE as Stein2019ODE  # noqa: E402
from ._models.registry import available_models as available_models  # noqa: E402
from ._models.registry import get_model as get_model  # noqa: E402
from ._population import CategoricalCovariate as CategoricalCovariate  # noqa: E402
from ._population import CategoricalEffect as CategoricalEffect  # noqa: E402
from ._population import ExpEffect as ExpEffect  # noqa: E402
from ._population import LogNormalCovariate as LogNormalCovariate  # noqa: E402
from ._population import Population as Population  # noqa: E402
from ._population import PowerEffect as PowerEffect  # noqa: E402
from ._regimen import Dose as Dose  # noqa: E402
from ._regimen import Intervention as Intervention  # noqa: E402
from ._regimen import Regimen as Regimen  # noqa: E402
from ._simulate import SimResult as SimResult  # noqa: E402
from ._simulate import simulate as simulate  # noqa: E402
from ._solve import Status as Status  # noqa: E402
from .api_fit import load_run as load_run  # noqa: E402
from .api_fit import run_fit as run_fit  # noqa: E402

try:
    __version__ = importlib.metadata.version("cartkin")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0+unknown"
