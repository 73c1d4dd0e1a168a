"""histosam.evaluation"""
