"""`make bench`: the service measured against ceilings taken from the same run (see run.py)."""
