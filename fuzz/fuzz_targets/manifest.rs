//! `shared::bundle::manifest_from_bytes` on raw bytes (a downloaded manifest.json, read
//! before its files are fetched). Beyond "no panic": what it promises holds of an accepted
//! manifest, the manifest serialised again is accepted again as the same manifest, and
//! `validate` with no files refuses it without panicking.
#![no_main]

use std::path::Path;

use edgecp_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(m) = manifest_checked(data) {
        let r = shared::bundle::validate::validate(&m, Path::new(MANIFEST_PATH), |_| None);
        assert!(r.is_err(), "validated without any of its files");
    }
});
