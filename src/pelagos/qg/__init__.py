"""pelagos.qg"""
