//! Shared by the fuzz targets (`fuzz_targets/`): their input formats.

pub mod format;
