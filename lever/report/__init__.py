"""lever.report"""
