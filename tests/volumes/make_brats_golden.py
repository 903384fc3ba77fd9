"""Regenerates tests/data/brats_loader_golden.safetensors: runs the official MedSegDiff
loader (ImprintLab/MedSegDiff, guided_diffusion/bratsloader.py, BRATSDataset3D) on the
synthetic case of volume_support.write_synthetic_brats_case, in a scratch folder outside the
repository, and stores only what it returns (slices, labels, resized slices) and how it
parses BraTS 2020 file names. Not a test; run by hand from the repository root:

    git clone https://github.com/ImprintLab/MedSegDiff /tmp/brats_scratch/MedSegDiff
    pip install --no-deps --target /tmp/tvlib torchvision==0.28.0      # torch 2.13's
    PYTHONPATH=/tmp/tvlib:/tmp/brats_scratch/MedSegDiff:tests/volumes \
        python tests/volumes/make_brats_golden.py
"""
import json
import shutil
import subprocess
from pathlib import Path

import torch
import torch.library

# The torchvision wheel is a CUDA build whose C ops do not load here; its import registers
# fake kernels for them, which would fail. Its tensor Resize is plain Python over
# torch.nn.functional.interpolate and needs none of them.
torch.library.register_fake = lambda *a, **k: (lambda f: f)

import torchvision  # noqa: E402
import torchvision.transforms as transforms  # noqa: E402
from guided_diffusion.bratsloader import BRATSDataset3D  # noqa: E402  (the official code)
from safetensors.torch import save_file  # noqa: E402
from volume_support import BRATS_SHAPE, write_synthetic_brats_case  # noqa: E402

SCRATCH = Path("/tmp/brats_scratch")
TARGET = Path(__file__).resolve().parents[1] / "data" / "brats_loader_golden.safetensors"
NAMES = ["BraTS20_Training_001_t1.nii.gz", "BraTS20_Training_001_t1ce.nii.gz",
         "BraTS20_Validation_125_flair.nii", "BraTS20_Training_369_seg.nii.gz",
         "BraTS20_Training_010_t2.nii.gz"]


def main():
    data = SCRATCH / "data"
    shutil.rmtree(data, ignore_errors=True)
    write_synthetic_brats_case(data)
    raw = BRATSDataset3D(str(data), None)
    up = BRATSDataset3D(str(data), transforms.Compose([transforms.Resize((32, 32))]))
    down = BRATSDataset3D(str(data), transforms.Compose([transforms.Resize((16, 16))]))
    out = {}
    for k in range(BRATS_SHAPE[2]):
        img, lab, _ = raw[k]
        out[f"image_{k}"] = img.float().contiguous()       # integers: exact in float32
        out[f"label_{k}"] = lab.to(torch.uint8).contiguous()
    for k in (0, 2):
        out[f"resized32_{k}"] = up[k][0].contiguous()       # float64, as the loader gives
        out[f"resized32_label_{k}"] = up[k][1].float().contiguous()
        out[f"resized16_{k}"] = down[k][0].contiguous()
    official = SCRATCH / "MedSegDiff"
    commit = subprocess.check_output(["git", "-C", str(official), "rev-parse", "HEAD"],
                                     text=True).strip()
    meta = {"source": f"ImprintLab/MedSegDiff@{commit} guided_diffusion/bratsloader.py "
                      "BRATSDataset3D",
            "torchvision": torchvision.__version__, "torch": torch.__version__,
            "seqtypes": json.dumps(list(raw.seqtypes)), "len": str(len(raw)),
            # the official file-name rule, as its __init__ applies it
            "parsed_names": json.dumps({n: n.split('_')[3].split('.')[0] for n in NAMES}),
            "paths": json.dumps({k: Path(v).name for k, v in raw.database[0].items()})}
    save_file(out, str(TARGET), metadata=meta)
    print(TARGET, TARGET.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
