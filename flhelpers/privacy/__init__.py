"""The attack on privacy: gradient inversion, what the server sees of a peer, image metrics.

* :mod:`~flhelpers.privacy.inversion` - the gradient-inversion attack of Geiping et al. 2020
  (cosine gradient matching + total variation, signed Adam, restarts; labels from the output
  bias gradient as iDLG).
* :mod:`~flhelpers.privacy.victims` - what the server sees under FL, FFL mixing and DP noise,
  and :func:`reconstruction_study`, which attacks each and scores the reconstructions.
* :mod:`~flhelpers.privacy.image_metrics` - PSNR and SSIM.
* :mod:`~flhelpers.privacy.models` - the small victim network of the inversion study.

The defense against it, DP-FedAvg, is a rule like any other (:mod:`flhelpers.defenses.dp`, with
its accountant); the privacy notebook's studies are :mod:`flhelpers_lab.privacy`, its figures
:mod:`flhelpers_lab.plots.privacy`.
"""

from __future__ import annotations

from flhelpers.privacy.image_metrics import ReconstructionScores, psnr, score_reconstructions, ssim, to_pixels
from flhelpers.privacy.inversion import (
    InversionConfig,
    InversionResult,
    gradient_from_update,
    invert_gradients,
    label_recovery_rate,
    model_gradient,
    recover_labels,
)
from flhelpers.privacy.models import SmallConvNet
from flhelpers.privacy.victims import (
    VICTIM_KINDS,
    StudyResult,
    Victim,
    observe,
    one_step_updates,
    reconstruction_study,
    sample_victim_batches,
)

__all__ = [
    "InversionConfig", "InversionResult", "ReconstructionScores", "SmallConvNet", "StudyResult", "VICTIM_KINDS",
    "Victim", "gradient_from_update", "invert_gradients", "label_recovery_rate", "model_gradient", "observe",
    "one_step_updates", "psnr", "reconstruction_study", "recover_labels", "sample_victim_batches",
    "score_reconstructions", "ssim", "to_pixels",
]
