"""SAM-Med3D and SegAnyPET: 3D teachers on a 128^3 region at 1.5 mm around the prompt.

Architecture: medim's ``SAM-Med3D`` (``medim.create_model("SAM-Med3D")``, PyPI ``medim``
0.1.2 by the SAM-Med3D authors; ViT-B image encoder 768 wide, 12 blocks, prompt dim 384,
128^3 input, 16^3 patches), which matches the reference repository's
``build_sam3D_vit_b_ori`` (uni-medical/SAM-Med3D ``segment_anything/build_sam3D.py``; the
test suite checks every parameter name and shape against a layout derived from it).
SegAnyPET (Zhang et al., 2025, YichiZhang98/SegAnyPET) uses the same architecture.

Checkpoints are read with ``torch.load(weights_only=True)``; ``sam_med3d_turbo.pth`` wraps
the weights in ``model_state_dict`` and SegAnyPET files may be wrapped or flat; keys and
shapes must match exactly.

Pre- and post-processing follow the reference inference (uni-medical/SAM-Med3D
``utils/infer_utils.py``: ``data_preprocess``, ``sam_model_infer``, ``data_postprocess``):
the image is resampled to 1.5 mm in the canonical RAS orientation, a 128^3 region is cut
around the centre of the prompt's bounding box (zero outside the image), z-normalised with
the mean and standard deviation of its voxels > 0 (torchio ``ZNormalization(masking_method=
lambda x: x > 0)``); points are voxel indices of that region; each refinement iteration
feeds the previous low-resolution (32^3) logits back as the mask prompt; the final logits
are upsampled to 128^3 and mapped back onto the input grid.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import DistillSegError
from ..io.resample import resample_to
from ..io.volume import Volume, apply_affine
from .base import check_hash_prefix, check_inputs, file_sha256, load_state_dict_strict, read_state_dict
from .prompts import CONFIDENT_HIGH, CONFIDENT_LOW, Prompt, mask_prompt, sample_points

log = logging.getLogger(__name__)

SPACING_MM = 1.5  # infer_utils.validate_paired_img_gt: target_spacing=(1.5, 1.5, 1.5)


@dataclass(frozen=True)
class SamMed3DConfig:
    """Sizes passed to medim's SAM-Med3D builder (defaults: the published turbo model)."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    prompt_embed_dim: int = 384
    image_size: int = 128
    vit_patch_size: int = 16

    @property
    def mask_size(self) -> int:
        """Side of the low-resolution logits / mask prompt (4x the embedding grid)."""
        return 4 * (self.image_size // self.vit_patch_size)


def build_sam_med3d_model(config: SamMed3DConfig = SamMed3DConfig()):
    """A randomly initialised SAM-Med3D of the given sizes, built by medim (no download)."""
    import medim

    sizes = asdict(config)
    sizes["encoder_global_attn_indexes"] = list(config.encoder_global_attn_indexes)
    # medim prints "creating model ..." on stdout, which carries JSON progress lines: kept for --debug.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        model = medim.create_model("SAM-Med3D", pretrained=False, **sizes)
    if printed.getvalue().strip():
        log.debug("medim: %s", printed.getvalue().strip())
    return model.eval()


class SamMed3DTeacher:
    """A SAM-Med3D-architecture teacher (SAM-Med3D for CT, SegAnyPET for PET).

    Args:
        name: registry name.
        model: medim ``SAM_Med3D`` module.
        config: its sizes.
        weights_sha256: SHA-256 of the checkpoint file.
        modality: default modality.
        iterations: refinement iterations (the first uses the prompt's points and mask,
            each later one adds a corrective click and feeds the previous logits back).
    """

    dims = 3
    modalities = ("CT", "PET")
    prompt_kinds = ("points", "mask")

    def __init__(self, name: str, model, config: SamMed3DConfig, weights_sha256: str, modality: str = "CT",
                 iterations: int = 3, device: str = "cpu") -> None:
        self.name = name
        self.model = model.eval().to(device)
        self.config = config
        self.weights_sha256 = weights_sha256
        self.modality = modality
        self.iterations = int(iterations)
        self.device = device

    def predict(self, image: Volume, prompt: Prompt, modality: str | None = None) -> np.ndarray:
        """Foreground probabilities ``(I, J, K)`` float32 in [0, 1] on the grid of ``image``
        (the CT in HU or the PET in SUV on its own grid; ``prompt`` on that grid)."""
        modality = check_inputs(self, image, prompt, modality)
        if prompt.is_empty():
            return np.zeros(image.shape, np.float32)
        roi = roi_grid(prompt.mask, image.affine, self.config.image_size)
        roi_image = resample_to(Volume(image.array.astype(np.float32), image.affine), roi, "linear", fill=0.0).array
        roi_prob = resample_to(Volume(np.asarray(prompt.mask, np.float32), image.affine), roi, "linear", fill=0.0).array
        points, labels = self._points(prompt, image.affine, roi, roi_prob)
        logits = self.infer(z_normalise(roi_image), points, labels,
                            roi_prob if "mask" in prompt.kinds else None, roi_prob)
        probability = Volume(_sigmoid(logits), roi.affine)
        return np.clip(resample_to(probability, image, "linear", fill=0.0).array, 0.0, 1.0).astype(np.float32)

    def infer(self, image: np.ndarray, points: np.ndarray, labels: np.ndarray,
              mask_probability: np.ndarray | None, reference: np.ndarray) -> np.ndarray:
        """Logits ``(N, N, N)`` on the region (N = image size) after iterative refinement.

        Args:
            image: z-normalised ``(N, N, N)`` region.
            points, labels: ``(P, 3)`` voxel indices in the region and ``(P,)`` 1/0 labels.
            mask_probability: prompt probabilities on the region for the first mask prompt
                (None: an all-zero mask prompt, as the reference's first click).
            reference: prompt probabilities on the region, from which corrective clicks
                are taken in later iterations.
        """
        import torch
        import torch.nn.functional as F

        model, size = self.model, self.config.image_size
        with torch.inference_mode():
            embedding = model.image_encoder(torch.from_numpy(image[None, None]).float().to(self.device))
            if mask_probability is None:
                low_res = torch.zeros((1, 1) + (self.config.mask_size,) * 3, device=self.device)
            else:
                low_res = torch.from_numpy(mask_prompt(mask_probability, (self.config.mask_size,) * 3))[None, None].to(self.device)
            coords = torch.from_numpy(points.astype(np.float32))[None].to(self.device)
            point_labels = torch.from_numpy(labels.astype(np.int64))[None].to(self.device)
            for iteration in range(max(1, self.iterations)):
                if iteration > 0:
                    current = _sigmoid(F.interpolate(low_res, size=(size,) * 3, mode="trilinear",
                                                     align_corners=False)[0, 0].cpu().numpy())
                    click = corrective_click(current >= 0.5, reference)
                    if click is None:
                        break
                    coords = torch.cat([coords, torch.tensor(click[0], dtype=torch.float32).view(1, 1, 3)], dim=1)
                    point_labels = torch.cat([point_labels, torch.tensor([[click[1]]])], dim=1)
                low_res = self.decode(embedding, coords, point_labels, low_res)
            logits = F.interpolate(low_res, size=(size,) * 3, mode="trilinear", align_corners=False)
        return logits[0, 0].cpu().numpy().astype(np.float32)

    def refine(self, image: np.ndarray, points: np.ndarray, labels: np.ndarray,
               mask_probability: np.ndarray | None) -> np.ndarray:
        """Logits ``(N, N, N)`` on the region from one decoder pass: the user's clicks and the
        previous mask as the mask prompt (one step of the reference's interactive loop).

        The region's image embedding is reused from the embedding store (keyed by the
        weights and the normalised region), so a correction around the same centre costs
        only the prompt encoder and decoder.
        """
        import torch
        import torch.nn.functional as F

        from .embeddings import default_store, encode_with_store

        size, mask_size = self.config.image_size, self.config.mask_size
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
            embedding = encode_with_store(self.model.image_encoder, tensor, self.weights_sha256, default_store(),
                                          self.device)
            low_res = (torch.zeros((1, 1) + (mask_size,) * 3) if mask_probability is None else
                       torch.from_numpy(mask_prompt(mask_probability, (mask_size,) * 3))[None, None]).to(self.device)
            coords = torch.from_numpy(np.asarray(points, np.float32).reshape(1, -1, 3)).to(self.device)
            point_labels = torch.from_numpy(np.asarray(labels, np.int64).reshape(1, -1)).to(self.device)
            low_res = self.decode(embedding, coords, point_labels, low_res)
            logits = F.interpolate(low_res, size=(size,) * 3, mode="trilinear", align_corners=False)
        return logits[0, 0].cpu().numpy().astype(np.float32)

    def decode(self, embedding, coords, point_labels, low_res):
        """One prompt-encoder + mask-decoder pass: low-resolution logits ``(1, 1, M, M, M)``."""
        sparse, dense = self.model.prompt_encoder(points=[coords, point_labels], boxes=None, masks=low_res)
        low_res, _ = self.model.mask_decoder(
            image_embeddings=embedding, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        )
        return low_res

    def _points(self, prompt: Prompt, affine: np.ndarray, roi: Volume, roi_prob: np.ndarray):
        if prompt.points is not None:
            world = apply_affine(affine, np.asarray(prompt.points, float))
            index = apply_affine(np.linalg.inv(roi.affine), world)
            inside = np.all((index >= 0) & (index <= np.array(roi.shape) - 1), axis=1)
            return index[inside], np.asarray(prompt.point_labels, np.int64)[inside]
        if "points" not in prompt.kinds:
            return np.zeros((0, 3)), np.zeros((0,), np.int64)
        return sample_points(roi_prob, prompt.n_positive, prompt.n_negative, seed=prompt.seed)


def roi_grid(mask: np.ndarray, affine: np.ndarray, size: int, spacing: float = SPACING_MM) -> Volume:
    """A ``size^3`` RAS grid at ``spacing`` mm centred on the prompt's bounding-box centre.

    (torchio ``CropOrPad(mask_name=...)`` in the reference centres the crop on the mask's
    bounding box; resampling onto this grid does the resampling, canonical orientation,
    cropping and zero padding in one step.)
    """
    index = np.argwhere(np.asarray(mask) >= 0.5)
    centre_index = (index.min(axis=0) + index.max(axis=0)) / 2.0
    return region_around(apply_affine(affine, centre_index[None])[0], size, spacing)


def region_around(centre: np.ndarray, size: int, spacing: float = SPACING_MM) -> Volume:
    """A ``size^3`` RAS grid at ``spacing`` mm whose centre is the RAS point ``centre`` (mm)."""
    roi_affine = np.diag([spacing, spacing, spacing, 1.0])
    roi_affine[:3, 3] = np.asarray(centre, float) - spacing * (size - 1) / 2.0
    return Volume(np.zeros((size, size, size), np.uint8), roi_affine)


def z_normalise(image: np.ndarray) -> np.ndarray:
    """(x - mean) / std with the statistics of the voxels > 0 (torchio ZNormalization as in
    SAM-Med3D's infer_utils.data_preprocess), applied to every voxel."""
    foreground = image[image > 0]
    if foreground.size < 2:
        return np.zeros_like(image, dtype=np.float32)
    std = float(foreground.std())
    return ((image - float(foreground.mean())) / (std if std > 0 else 1.0)).astype(np.float32)


def corrective_click(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Next click where the prediction disagrees with the confident prompt.

    As the reference's ``ritm`` click simulation (infer_utils.random_sample_next_click) with
    the prompt in place of the ground truth: the larger of the false-negative (confident
    foreground predicted background) and false-positive regions gets a click at its
    deepest voxel (largest distance to the region's border). None when they agree.
    """
    false_negative = (reference >= CONFIDENT_HIGH) & ~prediction
    false_positive = (reference <= CONFIDENT_LOW) & prediction
    best = None
    for region, label in ((false_negative, 1), (false_positive, 0)):
        if region.any():
            distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
            depth = float(distance.max())
            if best is None or depth > best[0]:
                best = (depth, np.array(np.unravel_index(int(distance.argmax()), region.shape), float), label)
    return None if best is None else (best[1], best[2])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


def load_sam_med3d(checkpoint: str | Path | None, name: str = "sam-med3d", modality: str | None = None,
                   config: SamMed3DConfig = SamMed3DConfig(), iterations: int = 3, device: str = "cpu") -> SamMed3DTeacher:
    """SAM-Med3D (``name="sam-med3d"``) or SegAnyPET (``"seganypet"``) from a checkpoint file.

    Raises:
        DistillSegError: no file, unreadable file, a hash-prefix name that does not match,
            or keys/shapes that differ from the architecture.
    """
    if checkpoint is None:
        raise DistillSegError(f"teacher {name} needs a checkpoint file (e.g. sam_med3d_turbo.pth)")
    path = Path(checkpoint)
    if not path.is_file():
        raise DistillSegError(f"{name} checkpoint not found: {path}")
    sha256 = file_sha256(path)
    check_hash_prefix(path, sha256)
    model = _load_model(str(path.resolve()), sha256, config)
    default = "PET" if name == "seganypet" else "CT"
    return SamMed3DTeacher(name, model, config, sha256, modality or default, iterations, device)


@lru_cache(maxsize=2)
def _load_model(path: str, sha256: str, config: SamMed3DConfig):
    """The model of a checkpoint, built once per process (the warm engine keeps it between
    prompts; the SHA-256 in the key reloads a changed file). Teachers loaded from the same
    file share it: deep-copy ``teacher.model`` before fine-tuning."""
    model = build_sam_med3d_model(config)
    load_state_dict_strict(model, read_state_dict(path), path)
    return model
