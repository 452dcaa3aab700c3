"""Check a training-data folder before training: which files are images, which are broken.

The folder layout is fastai's: one sub-folder per class, its name the label
(``DATA/grizzly/*.jpg``). Files are found the way fastai's ``get_image_files`` finds them
(image extensions known to ``mimetypes``, hidden files and folders skipped), so the set
checked here is exactly the set the DataBlock will read. Each image is opened and decoded
like fastai's ``verify_image`` does (a reduced-size JPEG decode, so it is quick); this
module needs Pillow only, not fastai.
"""

from __future__ import annotations

import mimetypes
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from monitor.model.bundle import ModelUsageError

# The extensions fastai's get_image_files accepts (fastai.data.transforms.image_extensions).
IMAGE_EXTENSIONS = frozenset(ext for ext, kind in mimetypes.types_map.items() if kind.startswith("image/"))


@dataclass(slots=True)
class DatasetReport:
    """What :func:`verify_dataset` found.

    Attributes:
        root: the data folder.
        images: the readable images, sorted.
        corrupt: (path, why) for each image file that cannot be decoded.
        removed: the corrupt files that were deleted.
        class_counts: label -> number of readable images.
    """

    root: Path
    images: list[Path] = field(default_factory=list)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The class labels, sorted (fastai's CategoryBlock sorts its vocab the same way)."""
        return sorted(self.class_counts)


def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, as fastai's ``get_image_files`` lists them.

    Args:
        root: the data folder.

    Returns:
        Sorted paths.
    """
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [
            Path(directory) / name
            for name in files
            if not name.startswith(".") and f".{name.rsplit('.', 1)[-1].lower()}" in IMAGE_EXTENSIONS
        ]
    return sorted(found)


def check_image(path: Path) -> str | None:
    """Whether an image file decodes; None if it does, else a short reason.

    Mirrors fastai's ``verify_image`` (open, draft to a small size, load).
    """
    try:
        with Image.open(path) as image:
            image.draft(image.mode, (32, 32))
            image.load()
    except Exception as exc:  # Pillow raises many types for bad files; any of them means "corrupt"
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'cannot decode'}"
    return None


def verify_dataset(
    root: Path,
    *,
    remove_corrupt: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> DatasetReport:
    """Find and decode every image in a training folder and check it can train a classifier.

    Args:
        root: the data folder (one sub-folder per class).
        remove_corrupt: delete the image files that do not decode.
        on_progress: called with (checked, total) after each file.

    Returns:
        The report; ``images`` excludes corrupt files whether or not they were removed.

    Raises:
        ModelUsageError: the folder does not exist, holds no images, holds images of fewer
            than two classes, or has images directly in it (they would get the folder's
            own name as their label).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ModelUsageError(f"data folder {root} does not exist or is not a folder; give a folder with one sub-folder per class")
    files = list_image_files(root)
    if not files:
        raise ModelUsageError(
            f"no images found in {root}; put photos in one sub-folder per class, e.g. {root}/grizzly/*.jpg"
        )
    loose = [p for p in files if p.parent == root]
    if loose:
        raise ModelUsageError(
            f"{len(loose)} image(s) lie directly in {root} (e.g. {loose[0].name}); move each into its class's sub-folder"
        )
    report = DatasetReport(root=root)
    for index, path in enumerate(files, 1):
        why = check_image(path)
        if why is None:
            report.images.append(path)
        else:
            report.corrupt.append((path, why))
            if remove_corrupt:
                path.unlink(missing_ok=True)
                report.removed.append(path)
        if on_progress is not None:
            on_progress(index, len(files))
    report.class_counts = dict(sorted(Counter(p.parent.name for p in report.images).items()))
    if len(report.class_counts) < 2:
        only = ", ".join(report.class_counts) or "none"
        raise ModelUsageError(
            f"{root} has readable images of {len(report.class_counts)} class(es) ({only}); a classifier needs at "
            "least two class sub-folders"
        )
    return report


def corrupt_summary(corrupt: Iterable[tuple[Path, str]], root: Path) -> list[str]:
    """One line per corrupt file, relative to ``root``, for printing."""
    return [f"{path.relative_to(root)}: {why}" for path, why in corrupt]
