"""The training half: spectra -> the optimizer's hyper-parameters.

``scheduler`` (:class:`TempBalance`: select -> refresh -> apply) holds a ``policies`` object (what a refresh turns
into values of one knob: metric -> ``mapping`` -> lr or weight decay); ``selection`` picks the matrices and the
parameters each unit drives; ``passes`` runs the spectral passes (now, in the background, staggered; ``fused_gpu``
on the GPU); ``commit`` turns a pass into unit factors; ``groups`` writes them into the param groups; ``cadence``
and ``epochs`` say when; ``watch`` follows the optimizer's steps; ``compat`` and ``presets`` are the papers'
reference codes and published configurations; ``llr`` is LLR (pretraining, AdamW or Muon + AdamW) as a policy.
"""
