"""Ingest: DICOM / NIfTI / ITK / images → de-identified ``Study → Series → Volume``."""

from data.errors import IngestError
from data.study import Series, SkippedObject, Study, Volume

__all__ = ["IngestError", "Series", "SkippedObject", "Study", "Volume", "load_study", "deidentify"]


def __getattr__(name):  # ingest pulls in pydicom/SimpleITK; import it on first use
    if name == "load_study":
        from data.ingest import load_study

        return load_study
    if name == "deidentify":
        from data.deid import deidentify

        return deidentify
    raise AttributeError(name)
