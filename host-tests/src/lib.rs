//! `fvd-host`: the std host for `fvd-core`.
