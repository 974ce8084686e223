//! What the test suites, benchmarks and fuzz targets share: [`memstore`] (storage in
//! memory with power-cut models), [`hooked`] (a storage whose operations a hook sees
//! first: counting, latency, chosen failures), [`workload`] (images and request mixes for benchmarks),
//! [`newimage`] (a new image's metadata as one buffer), [`malformed`] (one hostile image per
//! class of bad input) and [`fuzz`] (the fuzz targets' bodies, runnable on stable).

pub mod fuzz;
pub mod hooked;
pub mod malformed;
pub mod memstore;
pub mod newimage;
pub mod workload;
