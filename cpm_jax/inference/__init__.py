"""Predicting poses on what users bring: photos and videos, with any model source (`models`)."""
