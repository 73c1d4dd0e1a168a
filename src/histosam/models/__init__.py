"""histosam.models"""
