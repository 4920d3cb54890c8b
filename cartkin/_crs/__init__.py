"""CRS risk per dose: an ordinal link of the CRS grade on exposure metrics from simulated
kinetics, calibrated to individual grades or aggregated rates, and dose-risk tables with
uncertainty. Data flow: metrics -> link -> calibrate -> rules -> risk; scenario parses the TOML.
"""

from .calibrate import AggregateCohort as AggregateCohort
from .calibrate import Calibration as Calibration
from .calibrate import Prior as Prior
from .calibrate import fit_table as fit_table
from .kinetics import KineticPopulation as KineticPopulation
from .kinetics import SolveSettings as SolveSettings
from .link import OrdinalLink as OrdinalLink
from .link import fit_individual as fit_individual
from .metrics import METRICS as METRICS
from .metrics import ExposureOutputs as ExposureOutputs
from .risk import DoseRiskResult as DoseRiskResult
from .risk import DoseRiskSpec as DoseRiskSpec
from .risk import LinkSpec as LinkSpec
from .risk import run_dose_risk as run_dose_risk
from .rules import Tocilizumab as Tocilizumab
from .scenario import CRSConfig as CRSConfig
from .scenario import load_scenario as load_scenario
