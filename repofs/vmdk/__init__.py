"""The VMDK file format: monolithicFlat descriptors (rendered for the views, parsed for the
ingest) and hosted sparse extents (monolithicSparse, streamOptimized) read as backup sources.

Imports only ``repofs.errors`` of ours: every byte here comes from a file someone else wrote.
"""
