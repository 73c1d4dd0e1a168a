"""histosam.inference"""
