"""lever.runs"""
