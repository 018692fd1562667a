"""Every file the tools write gets the umask's ordinary permissions (issue 18): the atomic
writers' temporary files are 0600, and renamed as they were, `ngrams.tsv`, `pairs.tsv` and
every rendered PNG were unreadable to the group that shares the run folder."""

from __future__ import annotations

import os
from pathlib import Path

from strop.data.renderer import generate_dataset


def test_rendered_images_and_scenes_get_the_umask_mode(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        generate_dataset(tmp_path / "d", 3, size=16, seed=0, progress=False, workers=1)
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "d").rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in files)
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
