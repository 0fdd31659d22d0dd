"""Files the commands write, in one way.

- :mod:`.atomic` -- atomic writes: a file (:func:`atomic_path`, :func:`write_text`) or a folder
  (:func:`atomic_dir`, :func:`recover_dir`) is written under a temporary name and swapped into place;
  :func:`remove_stale_temps` clears what a killed writer left.
- :mod:`.checks` -- output paths checked before the work (:func:`check_output_file`, :func:`check_output_dir`).
"""
from .atomic import atomic_dir, atomic_path, recover_dir, remove_stale_temps, write_text
from .checks import check_output_dir, check_output_file

__all__ = ["atomic_path", "atomic_dir", "recover_dir", "remove_stale_temps", "write_text", "check_output_file",
           "check_output_dir"]
