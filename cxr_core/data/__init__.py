"""Data: study records, data set sources and layouts, splits, statistics, torch datasets and the uint8 cache."""

from cxr_core._face import lazy

__getattr__, __all__ = lazy(__name__, {
    "SOURCES": "cxr_core.data.sources",
    "SourceOptions": "cxr_core.data.sources",
    "detect_format": "cxr_core.data.sources",
    "read_manifest": "cxr_core.data.sources.synthetic",
    "DatasetReport": "cxr_core.data.stats",
    "Study": "cxr_core.data.study",
    "StudyImage": "cxr_core.data.study",
    "image_base": "cxr_core.data.study",
})
