"""lever.eval"""
