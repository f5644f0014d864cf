"""The logic of the study notebooks, so the notebooks stay thin.

- :mod:`dmutils.studies.attention` (notebook 01): cross-attention at every resolution of the model, per timestep
  window and per head, self-attention affinity of a pixel, the effect of tau, and how well each map picks out its
  object (ROC AUC for the oracle's mask, 0.5 = uninformative) -- all from one generation.
- :mod:`dmutils.studies.thresholds` (notebook 02): IoU against the oracle as a function of the
  threshold, per class, with confidence bands; the best threshold per class as the ``class,threshold``
  table that ``masks.threshold_mode='per_class'`` reads; the same sweep over tau and CRF on/off.
- :mod:`dmutils.studies.noise_study`, :mod:`~dmutils.studies.open_vocab`, :mod:`~dmutils.studies.scaling` (issue 24,
  ``dmutils bench noise-learning | open-vocab | scaling``): which parts of the recipe matter, over many cached
  trainings (:mod:`dmutils.studies.trainings`) with intervals over seeds and test images.
- :mod:`dmutils.studies.explorer` (``notebooks/explore_attention.ipynb``): the interactive view.

Figures are drawn with :mod:`dmutils.figures`; the oracle comes from :func:`dmutils.oracles.get_oracle`.
"""
