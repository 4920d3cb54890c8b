"""Data: NONMEM-style IO and validation, the bundled published datasets, simulated cohorts."""
