//! `shared::bundle::validate::validate` with bytes only: the input is a manifest, a golden
//! file and a reference file (`split`: u16 lengths before the first two). The manifest
//! goes through `manifest_from_bytes` (and its invariants), the golden bytes through
//! `Golden::parse` (accepted data writes back to the same data), and `validate` gets the
//! golden and reference bytes under the names the manifest gives them. A manifest that
//! validates, serialised again, validates again.
#![no_main]

use std::path::Path;

use edgecp_fuzz::*;
use libfuzzer_sys::fuzz_target;
use shared::bundle::validate::validate;

fuzz_target!(|data: &[u8]| {
    let [manifest, golden, reference] = split::<3>(data);
    golden_checked(golden);
    let Some(m) = manifest_checked(manifest) else {
        return;
    };
    let files = validate_files(&m, golden, reference);
    let path = Path::new(MANIFEST_PATH);
    match validate(&m, path, |n| files.get(n).copied()) {
        Ok(()) => {
            let g = golden_checked(files[&m.golden.file]).expect("validated golden data parses");
            assert_eq!(g.count() as u64, m.golden.count);
            let again = serde_json::to_vec(&m).unwrap();
            let m2 = shared::bundle::manifest_from_bytes(&again, path).unwrap();
            let files2 = validate_files(&m2, golden, reference);
            if let Err(e) = validate(&m2, path, |n| files2.get(n).copied()) {
                panic!("a valid manifest, serialised again, is invalid: {e}");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
