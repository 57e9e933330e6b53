"""pelagos.column"""
