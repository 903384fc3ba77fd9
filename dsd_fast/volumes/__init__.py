"""Volumes (#35): NIfTI and DICOM segmented slice by slice, written back as NIfTI volumes.

    from dsd_fast.volumes import segment_volume, write_volume_outputs, score_volume
    result = segment_volume(dsd_fast.load("brats.pt"), "BraTS20_Training_001/")
    write_volume_outputs(result, "out/")          # <case>_mask.nii.gz, _prob, _uncertainty
    result.score()                                # Dice, HD95 in mm, volumes in mL

reader.py reads (NIfTI, DICOM file / multi-frame / series), brats.py a BraTS case folder as
the official MedSegDiff loader does, load.py picks the reader for a path, segment.py runs a segmenter's batched loop over the
slices, writer.py writes NIfTI with the input's affine and header, score.py scores.
Needs the `volumes` extra: pip install 'dsd_fast[volumes]' (nibabel, pydicom).
"""
from .brats import MODALITIES, find_brats_files, read_brats_case
from .load import read_volume
from .reader import Volume, case_name, is_nifti, read_dicom_file, read_dicom_series, \
    read_nifti
from .score import evaluate_volume_folders, score_volume
from .segment import INTENSITIES, VolumeResult, segment_volume
from .writer import output_paths, write_volume_outputs

__all__ = ["MODALITIES", "INTENSITIES", "Volume", "VolumeResult", "case_name",
           "evaluate_volume_folders",
           "find_brats_files", "is_nifti", "output_paths", "read_brats_case",
           "read_dicom_file", "read_dicom_series", "read_nifti", "read_volume",
           "score_volume", "segment_volume", "write_volume_outputs"]
