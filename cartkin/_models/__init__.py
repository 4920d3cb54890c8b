"""The model library: one file per published model."""

from .base import ClosedFormModel as ClosedFormModel
from .base import Model as Model
from .base import ODEModel as ODEModel
from .base import Output as Output
from .base import Param as Param
from .stein2019 import Stein2019 as Stein2019
from .stein2019 import Stein2019ODE as Stein2019ODE
