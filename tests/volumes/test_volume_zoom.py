"""crop="zoom" on volumes: segment_volume hands each slice to the zoom's second pass (it
passed the slices only for a CRF, and zoom refused to run without them)."""
from __future__ import annotations

import numpy as np

from volume_support import SKIP_WITHOUT_VOLUMES, flipped_affine, phantom, save_nifti, \
    threshold_segmenter

pytestmark = SKIP_WITHOUT_VOLUMES


def test_a_volume_zooms_slice_by_slice(tmp_path):
    """A pointwise segmenter (mask = view > 0.5, the view the slice itself) gives the same
    mask zoomed or not: pass 2 sees the same pixels inside the box, pass 1's stand outside.
    Slices with foreground get a second pass keyed <slice key>#zoom; the others a second
    pass on the whole slice with its own key (crop="full"'s result). No third pass: the
    segmenter being pointwise, pass 2 finds pass 1's component and its box is pass 1's."""
    from dsd_fast.volumes import segment_volume
    vol = phantom()
    path = save_nifti(tmp_path / "phantom.nii.gz", vol, flipped_affine(), dtype=np.int16)
    seg = threshold_segmenter()
    full = segment_volume(seg, path, steps=2, ensemble=2, batch_slices=1)
    seg.seen_keys.clear()
    zoomed = segment_volume(seg, path, steps=2, ensemble=2, batch_slices=1, crop="zoom")
    np.testing.assert_array_equal(zoomed.mask, full.mask)
    np.testing.assert_array_equal(zoomed.probability, full.probability)
    n = vol.shape[2]
    with_foreground = [k for k in range(n) if (vol[:, :, k] > 550).any()]
    assert 0 < len(with_foreground) < n
    assert sorted(seg.seen_keys) == sorted(
        [f"phantom:2:{k}" for k in range(n)]
        + [f"phantom:2:{k}#zoom" for k in with_foreground]
        + [f"phantom:2:{k}" for k in range(n) if k not in with_foreground])
