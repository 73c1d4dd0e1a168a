"""histosam.io"""
