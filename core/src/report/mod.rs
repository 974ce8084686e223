//! What `fvd-img info|map|check --output json` print and the inspector exports, written
//! once for both hosts: a streaming, allocation-free JSON writer ([`json`]) and the three
//! documents ([`info`] with the counts its scan gathers ([`info_scan`]), [`map`],
//! [`check`]). Hosts gather what only they can know (names, allocated sizes, the runs and
//! findings their engines and scanners report) and call these writers.

pub mod check;
pub mod info;
pub mod info_scan;
pub mod json;
pub mod map;
