"""PUMP: ConvMixer dense descriptors, the 4D correlation pyramid, its unsupervised losses and inference.

Spec: ``../shared/specs/pump.md``. Clean-room implementation from the spec and the paper.
"""
