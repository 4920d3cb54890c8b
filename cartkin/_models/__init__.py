"""The model library: one file per published model."""

from .barros2021 import Barros2021 as Barros2021
from .base import ClosedFormModel as ClosedFormModel
from .base import Model as Model
from .base import ODEModel as ODEModel
from .base import Output as Output
from .base import Param as Param
from .hardiansyah2019 import Hardiansyah2019 as Hardiansyah2019
from .kimmel2021 import Kimmel2021 as Kimmel2021
from .lisocel import LisoCel as LisoCel
from .lisocel import LisoCelODE as LisoCelODE
from .stein2019 import Stein2019 as Stein2019
from .stein2019 import Stein2019ODE as Stein2019ODE
from .antigen_escape import AntigenEscapeBALL as AntigenEscapeBALL
from .armored import ArmoredCAR as ArmoredCAR
from .bcell_aplasia import BCellAplasia as BCellAplasia
from .leontriana2021_ball import LeonTriana2021BALL as LeonTriana2021BALL
from .leontriana2021_solid import LeonTriana2021Solid as LeonTriana2021Solid
from .mdsc import MDSCSuppression as MDSCSuppression
