"""Training on Ray Train: ``matchmill train pump|ncnet|patch2pix CONFIG``.

Layout (one job each):

- :mod:`.config`: job defaults, YAML + dotted overrides, validation before anything starts;
- :mod:`.manifest_data`: training data read by each worker from manifests (never the driver);
- :mod:`.pump_task`, :mod:`.ncnet_task`, :mod:`.patch2pix_task`: what each model trains on and
  how it is validated (models stay pure PyTorch in ``matchmill.models``);
- :mod:`.loop`: the per-worker loop (device, DDP, AMP, NaN stop, logging, checkpoints);
- :mod:`.checkpoints`, :mod:`.train_log`: checkpoint files and the Parquet step log;
- :mod:`.progress`: the driver's console lines, read from that log;
- :mod:`.validation`: MMA@3 of synthetic pairs, pose AUC and Sampson error of held-out pairs;
- :mod:`.trainer`: the driver (``TorchTrainer``, scaling, storage, resume);
- :mod:`.status`: ``matchmill status`` of a training run.
"""
