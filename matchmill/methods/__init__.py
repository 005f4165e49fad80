"""Matching methods: one module per family (SIFT, mutual NN, identity, PUMP, NCNet, Patch2Pix), the
protocols every stage calls, and one registry. See :mod:`matchmill.methods.base`."""
