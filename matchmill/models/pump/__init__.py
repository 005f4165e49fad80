"""PUMP: ConvMixer dense descriptors, the 4D correlation pyramid, its unsupervised losses and inference.

Spec: ``docs/specs/pump.md``. Clean-room implementation from the spec and the paper.
"""
