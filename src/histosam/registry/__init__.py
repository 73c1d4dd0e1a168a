"""histosam.registry"""
