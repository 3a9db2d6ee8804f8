"""The on-disk format: header, manifest (per-sample byte index), tar and zarr shards."""
