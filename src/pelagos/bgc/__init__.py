"""pelagos.bgc"""
