"""histosam.measure"""
