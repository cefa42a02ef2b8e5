"""The generic fine-tune engine: stages in order, with small collaborators for each concern.

``loop`` sequences stages and epochs; ``device`` owns every device decision (AMP,
channels-last, pinned memory, compile); ``schedule`` the learning-rate shape; ``cache`` the
frozen-trunk feature cache; ``guards`` early stopping, the drift guard and non-finite losses;
``ema`` the weight average; ``rundir`` checkpoints and resume; ``logs`` metrics and progress;
``distributed`` DDP through torchrun; ``api`` the public ``finetune`` / ``evaluate``.
"""
