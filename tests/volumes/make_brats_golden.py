"""Regenerates tests/data/brats_loader_golden.safetensors: runs the official MedSegDiff
loader (ImprintLab/MedSegDiff, guided_diffusion/bratsloader.py, BRATSDataset3D) on the
synthetic case of volume_support.write_synthetic_brats_case, in a scratch folder outside the
repository, and stores only what it returns (slices, labels, resized slices) and how it
parses BraTS 2020 file names. Not a test; run by hand:

    git clone <ImprintLab/MedSegDiff> /tmp/brats_scratch/MedSegDiff
    pip install --no-deps --target /tmp/tvlib torchvision==0.28.0    # torch 2.13's
    python tests/volumes/make_brats_golden.py
"""
import json, sys, shutil, subprocess
from pathlib import Path
import numpy as np
import torch, torch.library
# torchvision 0.28 CUDA wheel without its C ops: its meta registrations would fail; Resize
# on tensors is pure Python over torch.nn.functional.interpolate
torch.library.register_fake = lambda *a, **k: (lambda f: f)
sys.path.insert(0, "/tmp/tvlib")
import torchvision
import torchvision.transforms as transforms
OFFICIAL = Path("/tmp/brats_scratch/MedSegDiff")
sys.path.insert(0, str(OFFICIAL))
sys.path.insert(0, "/work/main/tests/volumes")
from guided_diffusion.bratsloader import BRATSDataset3D
from volume_support import write_synthetic_brats_case, BRATS_SHAPE
data = Path("/tmp/brats_scratch/data")
shutil.rmtree(data, ignore_errors=True)
write_synthetic_brats_case(data)
raw = BRATSDataset3D(str(data), None)
up = BRATSDataset3D(str(data), transforms.Compose([transforms.Resize((32, 32))]))
down = BRATSDataset3D(str(data), transforms.Compose([transforms.Resize((16, 16))]))
out = {}
for k in range(BRATS_SHAPE[2]):
    img, lab, path = raw[k]
    out[f"image_{k}"] = img.float().contiguous()         # integers: exact in float32
    out[f"label_{k}"] = lab.to(torch.uint8).contiguous()
    print(k, img.shape, img.dtype, lab.shape, path)
for k in (0, 2):
    out[f"resized32_{k}"] = up[k][0].contiguous()         # float64, as the loader gives
    out[f"resized32_label_{k}"] = up[k][1].float().contiguous()
    out[f"resized16_{k}"] = down[k][0].contiguous()
# the official file-name rule on BraTS 2020 names
names = ["BraTS20_Training_001_t1.nii.gz", "BraTS20_Training_001_t1ce.nii.gz",
         "BraTS20_Validation_125_flair.nii", "BraTS20_Training_369_seg.nii.gz",
         "BraTS20_Training_010_t2.nii.gz"]
parsed = {n: n.split('_')[3].split('.')[0] for n in names}
order = list(raw.seqtypes)
files = raw.database[0]
meta = {"source": "ImprintLab/MedSegDiff@" + subprocess.check_output(
            ["git", "-C", "/work/.mirror/ImprintLab+MedSegDiff/repo", "rev-parse", "HEAD"],
            text=True).strip() + " guided_diffusion/bratsloader.py BRATSDataset3D",
        "torchvision": torchvision.__version__, "torch": torch.__version__,
        "seqtypes": json.dumps(order), "parsed_names": json.dumps(parsed),
        "len": str(len(raw)), "paths": json.dumps({k: Path(v).name for k, v in files.items()})}
from safetensors.torch import save_file
target = Path("/work/main/tests/data/brats_loader_golden.safetensors")
save_file(out, str(target), metadata=meta)
print(target.stat().st_size, meta)
