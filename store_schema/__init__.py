"""The feature store's schema (v1): paths, manifest, codecs and the per-teacher Zarr v3 store.

See docs/ARCHITECTURE.md "Store layout". Import the submodules directly
(`from store_schema.teacher_store import open_teacher_store`); nothing is re-exported here so that
importing the package stays cheap.
"""
