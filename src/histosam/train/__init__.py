"""histosam.train"""
