"""Shared contract of msmtfn: dataset manifests, label schemes and the cache store between the two
stages."""

__version__ = "0.1.0"
