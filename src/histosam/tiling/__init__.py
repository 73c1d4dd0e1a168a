"""histosam.tiling"""
