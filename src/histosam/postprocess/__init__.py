"""histosam.postprocess"""
