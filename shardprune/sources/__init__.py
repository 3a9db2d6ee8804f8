"""Converter inputs: one module per source kind, each producing a :class:`~shardprune.sources.base.Source`."""
