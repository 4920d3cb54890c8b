"""Estimation methods: one file per method."""
