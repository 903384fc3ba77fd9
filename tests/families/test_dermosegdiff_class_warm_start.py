"""A binary DermoSegDiff model starts a model of K classes (adapted_state_dict, mask
channels 1 -> K): each class starts as the binary model's foreground."""
from __future__ import annotations

import pytest
import torch

from dsd_fast.families import find_config

from conftest import perturb_weights


def test_binary_weights_start_each_class_as_the_foreground():
    fam, two = find_config("tiny_2class")
    one = two.replace(channels_x=1, out_dim=1)
    torch.manual_seed(0)
    # off the zero-initialised output layer, on a generator of its own
    binary = perturb_weights(fam.build_reference(one), generator=torch.Generator().manual_seed(1))
    classes = fam.build_reference(two).eval()
    classes.load_state_dict(fam.adapted_state_dict(binary.state_dict(), one, two))
    x, g, t = torch.randn(2, 1, 16, 16), torch.rand(2, 3, 16, 16), torch.tensor([3, 90])
    with torch.no_grad():
        want = binary(x, g, t)                            # (2, 1, 16, 16)
        got = classes(x.expand(-1, 2, -1, -1), g, t)      # both classes given the same mask
    torch.testing.assert_close(got, want.expand(-1, 2, -1, -1), atol=1e-5, rtol=1e-5)
    assert want.abs().max() > 1e-2                        # a real output, not zeros


def test_only_binary_to_k_classes():
    fam, two = find_config("tiny_2class")
    three = two.replace(channels_x=3, out_dim=3)
    net = fam.build_reference(two)
    with pytest.raises(ValueError, match="only a binary model"):
        fam.adapted_state_dict(net.state_dict(), two, three)
