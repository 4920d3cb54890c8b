"""Datasets: read, check and write NONMEM-style data; load the bundled published datasets;
simulate cohorts with known truth.

>>> import cartkin.data
>>> cartkin.data.available()                       # the bundled datasets
>>> ds = cartkin.data.load("stein2019_sim200")     # a simulated cohort (NONMEM-style)
>>> pset = cartkin.data.load("stein2019_parameters", omega_reading="variance")
>>> ds = cartkin.data.read_nonmem("my_cohort.csv")  # sidecar my_cohort.json if present
>>> cartkin.data.write_nonmem(ds, "copy.csv")
"""

from ._data.cohort import STEIN_SCHEDULE as STEIN_SCHEDULE
from ._data.cohort import Cohort as Cohort
from ._data.cohort import Visit as Visit
from ._data.cohort import simulate_cohort as simulate_cohort
from ._data.dataset import Dataset as Dataset
from ._data.dataset import Subject as Subject
from ._data.dataset import SubjectArrays as SubjectArrays
from ._data.nonmem import dataset_from_frame as dataset_from_frame
from ._data.nonmem import read_nonmem as read_nonmem
from ._data.nonmem import to_csv_text as to_csv_text
from ._data.nonmem import write_nonmem as write_nonmem
from ._data.problems import DataError as DataError
from ._data.problems import Excluded as Excluded
from ._data.problems import Problem as Problem
from ._data.registry import available as available
from ._data.registry import catalog as catalog
from ._data.registry import data_dir as data_dir
from ._data.registry import load as load
from ._data.registry import sidecar as sidecar
from ._data.sidecar import STANDARD_ENDPOINTS as STANDARD_ENDPOINTS
from ._data.sidecar import ColumnSpec as ColumnSpec
from ._data.sidecar import Endpoint as Endpoint
from ._data.sidecar import Sidecar as Sidecar
from ._data.sidecar import read_sidecar as read_sidecar
from ._data.sidecar import standard_endpoint as standard_endpoint
from ._data.sidecar import write_sidecar as write_sidecar
from ._data.tables import ParameterSet as ParameterSet
from ._data.tables import Table as Table
from ._data.units import conversion_factor as conversion_factor
