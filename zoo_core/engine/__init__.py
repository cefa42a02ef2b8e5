"""The generic fine-tune engine: stages in order, with small collaborators for each concern.

``options`` holds what the user chose (one ``RunOptions``); ``recipes`` applies ``--set``;
``start`` builds the starting model; ``schedule`` says what trains when, at which rate;
``setup`` puts the model in each stage's shape (freezing, feature cache, DDP/compile);
``loop`` sequences stages and epochs; ``state`` lays out checkpoints and restores them;
``guards`` track the best and stop stages and runs; ``cache``, ``ema``, ``device``,
``distributed``, ``rundir``, ``logs`` and ``evaluation`` do one thing each; ``api`` holds the
public ``finetune`` / ``evaluate``.
"""
