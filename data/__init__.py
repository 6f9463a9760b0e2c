"""Ingest: DICOM / NIfTI / ITK / images → de-identified ``Study → Series → Volume``."""

from data.errors import IngestError
from data.study import Series, SkippedObject, Study, Volume

__all__ = ["IngestError", "Series", "SkippedObject", "Study", "Volume", "load_study", "load_studies", "deidentify"]


def __getattr__(name):  # ingest pulls in pydicom/SimpleITK; import it on first use
    if name in ("load_study", "load_studies"):
        import data.ingest

        return getattr(data.ingest, name)
    if name == "deidentify":
        from data.deid import deidentify

        return deidentify
    raise AttributeError(name)
