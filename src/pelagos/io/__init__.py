"""pelagos.io"""
