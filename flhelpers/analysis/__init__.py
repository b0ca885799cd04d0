"""The paper's gradient analysis (section 5.1): PCA views, angles, output-neuron magnitudes.

* :mod:`~flhelpers.analysis.gradients` - the views, PCA, angles, magnitudes, and the
  :class:`~flhelpers.analysis.gradients.UpdateRecorder` that keeps them every round;
* :mod:`~flhelpers.analysis.capture` - one run with the recorder, stored and read back.
"""
