"""App-ready bundles (Android, iOS, Raspberry Pi): shards under store limits, a manifest, an aligned archive,
and `verify`."""
