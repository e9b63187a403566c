"""biovfm logger plugin: Weights & Biases (``pip install 'biovfm[wandb]'``, then ``--logger wandb``)."""
