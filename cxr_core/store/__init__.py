"""SQLite stores: the study index and reviewer decisions (one connection per file per process)."""

from cxr_core._face import lazy

__getattr__, __all__ = lazy(__name__, {
    "StudyIndex": "cxr_core.store.index",
    "IndexedRoot": "cxr_core.store.index",
    "ScanResult": "cxr_core.store.index",
    "ReviewStore": "cxr_core.store.reviews",
    "Review": "cxr_core.store.reviews",
    "EXPORT_COLUMNS": "cxr_core.store.reviews",
    "default_reviews_path": "cxr_core.store.reviews",
    "root_key": "cxr_core.store.reviews",
    "export_dicom_sr": "cxr_core.store.dicom_sr",
    "SrExport": "cxr_core.store.dicom_sr",
})
