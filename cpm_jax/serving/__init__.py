"""Exported models: the formats serving runtimes load (`export`) and running them back (`runtimes`)."""
