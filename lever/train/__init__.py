"""lever.train"""
