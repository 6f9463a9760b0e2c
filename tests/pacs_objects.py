"""What the app's report panel sends to a PACS, built from a de-identified study: a DICOM SEG and a Comprehensive SR
(highdicom), for the PACS tests of every protocol."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from data.deid import deidentify

__all__ = ["deidentified_copy", "make_seg", "make_sr"]


def deidentified_copy(files):
    """The de-identified datasets the app holds after ingest (keys go to data.deid's keyring)."""
    return sorted((deidentify(pydicom.dcmread(p)) for p in files), key=lambda d: float(d.ImagePositionPatient[2]))


def make_seg(source):
    mask = np.zeros((len(source), source[0].Rows, source[0].Columns), dtype=bool)
    mask[1:4, 8:20, 10:22] = True
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="liver", segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name="ct_segmentation", family=codes.cid7162.ArtificialIntelligence, version="1"),
    )
    return hd.seg.Segmentation(
        source_images=source, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="m3", manufacturer_model_name="m3",
        software_versions="0.1.0", device_serial_number="0",
    )


def make_sr(source):
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"), template_id="2000")
    findings = hd.sr.TextContentItem(
        name=hd.sr.CodedConcept("121071", "DCM", "Finding"), value="Liver volume 1523.4 mL. No focal lesion.",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    root.ContentSequence = [findings]
    return hd.sr.ComprehensiveSR(
        evidence=source, content=root, series_instance_uid=generate_uid(), series_number=902,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="m3",
    )
