"""histosam.server"""
