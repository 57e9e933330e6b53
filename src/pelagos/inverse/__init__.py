"""pelagos.inverse"""
