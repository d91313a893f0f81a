"""Data: loaders for IDX / NPZ files and built-in sets (no downloads, ever), and the fixed-order
:class:`DataSource` view every gconv routine uses."""
from gconv.data.source import Batch, DataSource, as_data_source

__all__ = ["Batch", "DataSource", "as_data_source"]
