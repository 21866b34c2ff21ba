"""spatialrl"""
