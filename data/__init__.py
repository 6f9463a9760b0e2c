"""Ingest: DICOM / NIfTI / ITK / images → de-identified ``Study → Series → Volume``."""

from data.errors import IngestError
from data.limits import ArchiveLimits, IngestLimits
from data.study import Series, SkippedObject, Study, Volume
from data.workdir import sweep_stale_ingest_dirs

__all__ = ["IngestError", "IngestLimits", "ArchiveLimits", "Series", "SkippedObject", "Study", "Volume", "load_study",
           "load_studies", "deidentify", "sweep_stale_ingest_dirs"]


def __getattr__(name):  # ingest pulls in pydicom/SimpleITK; import it on first use
    if name in ("load_study", "load_studies"):
        import data.ingest

        return getattr(data.ingest, name)
    if name == "deidentify":
        from data.deid import deidentify

        return deidentify
    raise AttributeError(name)
