"""Datasets: CDVAE-format CSV loading, caching, splits and the registry."""
from jaxinv.data.dataset import Dataset, SkippedRow
from jaxinv.data.loader import DatasetNotFoundError, load_dataset, load_from_config, parse_spec, read_cdvae_csv
from jaxinv.data.registry import REGISTRY

__all__ = ["Dataset", "SkippedRow", "DatasetNotFoundError", "load_dataset", "load_from_config", "parse_spec", "read_cdvae_csv", "REGISTRY"]
