"""histosam.wsi"""
