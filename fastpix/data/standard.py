"""The reference's pix2pix data sets in one command, as its datasets/download_pix2pix_dataset.sh gets them:
<mirror>/datasets/<name>.tar.gz, downloaded (fastpix.download), extracted safely (fastpix.data.archive) to
<root>/<name>/ and then removed. An archive already at <root>/<name>.tar.gz (downloaded by hand, or left whole by an
earlier run that stopped while extracting) is used instead of downloading it again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from fastpix.config import MIRROR_ENV, PIX2PIX_DATASETS, DatasetDownloadConfig
from fastpix.data.archive import extract_tar
from fastpix.download import Fetched, exclusive, fetch, mirror_base
from fastpix.errors import ConfigError, DataError, UnsafeArchive

CITYSCAPES = (
    "cityscapes cannot be downloaded (its licence forbids redistribution): get gtFine_trainvaltest.zip and "
    "leftImg8bit_trainvaltest.zip from https://www.cityscapes-dataset.com, unzip both, then run "
    "fastpix data cityscapes --gtFine ./gtFine --leftImg8bit ./leftImg8bit --out ./datasets/cityscapes"
)


@dataclass
class DatasetDownload:
    name: str
    folder: str
    url: str
    files: int = 0  # extracted
    present: bool = False  # the folder was there already and was left alone
    fetched: Fetched | None = None  # None: the archive was there already


def dataset_url(name: str, mirror: str | None = None) -> str:
    return f"{mirror_base(mirror)}/datasets/{name}.tar.gz"


def download_dataset(cfg: DatasetDownloadConfig, progress: bool = True) -> DatasetDownload:
    """<root>/<name>/ from the mirror's archive, unless it is there already (cfg.force: replace it)."""
    if cfg.name == "cityscapes":
        raise ConfigError(CITYSCAPES)
    if cfg.name not in PIX2PIX_DATASETS:
        raise ConfigError(f"{cfg.name!r} is not a pix2pix data set: {', '.join(PIX2PIX_DATASETS)}")
    folder, url = os.path.join(cfg.root, cfg.name), dataset_url(cfg.name, cfg.mirror)
    if os.path.lexists(folder) and not cfg.force:
        return DatasetDownload(cfg.name, folder, url, present=True)
    archive = os.path.join(cfg.root, f"{cfg.name}.tar.gz")
    by_hand = f"download it by hand to {archive} and run the command again"
    with exclusive(cfg.root, cfg.name, DataError):
        fetched = None
        if not os.path.isfile(archive):
            fetched = fetch(url, archive, by_hand, cfg.retries, cfg.read_timeout_s, progress, f"{cfg.name}.tar.gz")
        try:
            files = extract_tar(archive, cfg.name, folder, replace=cfg.force, progress=progress)
        except DataError as exc:
            if fetched is None:  # the user's file: theirs to remove
                raise DataError(f"{exc}: remove it and run again (or download it by hand from {url})") from exc
            with contextlib.suppress(FileNotFoundError):
                os.remove(archive)
            if isinstance(exc, UnsafeArchive):
                raise UnsafeArchive(
                    f"{exc}; it came from {url}, which serves no pix2pix data set there: check "
                    f"--mirror (or ${MIRROR_ENV})"
                ) from exc
            raise DataError(f"{exc}; it came from {url}: run again, or {by_hand}") from exc
        os.remove(archive)
    return DatasetDownload(cfg.name, folder, url, files, fetched=fetched)
