"""pelagos.nn"""
