"""Private copies of generated MMEarth files, for the data tests to break."""

import shutil

SUFFIXES = (".h5", "_band_stats.json", "_splits.json", "_tile_info.json")


def copy_dataset(stem, tmp_path):
    """Copy the four files of ``stem`` to ``tmp_path/copy/d*``; returns the new stem."""
    out = tmp_path / "copy"
    out.mkdir()
    for suffix in SUFFIXES:
        shutil.copy(stem + suffix, str(out / "d") + suffix)
    return str(out / "d")
