"""Atomic file output for packages built on rba (the search writes its tables and study records with it):
every file is written under a temporary name in its folder and renamed into place, so an interrupted run never
leaves a truncated file that a later run would trust; files read back against one schema per file kind, shared
by the writer and the reader; and output folders that know which study or comparison they hold and refuse another.
The implementations are :mod:`rba._io`, :mod:`rba._records` and :mod:`rba._folders`."""

from rba._folders import FolderError, identity_diff, refusal, refuse_other_work
from rba._io import atomic_path, atomic_write_json, atomic_write_text, long_name, package_versions, pid_alive
from rba._records import Record, checked, read_record, read_table

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text", "package_versions", "pid_alive", "long_name", "Record",
           "checked", "read_record", "read_table", "FolderError", "identity_diff", "refusal", "refuse_other_work"]
