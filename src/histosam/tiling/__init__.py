"""Tile grids with halo and the streaming chunk engine for automatic instance segmentation."""

from histosam.tiling.engine import (
    ChunkResult,
    IncompleteObjectError,
    IncompleteObjectWarning,
    iter_ais_chunks,
    paste_chunk,
    postprocess_chunk,
    segment_array,
)
from histosam.tiling.grid import Box, Tile, TileGrid
from histosam.tiling.maps import MapAssembler

__all__ = [
    "Box",
    "ChunkResult",
    "IncompleteObjectError",
    "IncompleteObjectWarning",
    "MapAssembler",
    "Tile",
    "TileGrid",
    "iter_ais_chunks",
    "paste_chunk",
    "postprocess_chunk",
    "segment_array",
]
