//! Writes the seed corpora under fuzz/seeds/<target>/ (committed; run again after a format
//! change): `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`.

use std::path::Path;

use edgecp_fuzz::*;
use shared::icp::NcmKind;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let _ = std::fs::remove_dir_all(&root);

    // command: envelopes as they arrive over MQTT
    let dir = root.join("command");
    let keys = trusted_keys();
    for (name, cmd) in sample_commands() {
        let env = cmd.sign(&command_key()).unwrap();
        let bytes = serde_json::to_vec(&env).unwrap();
        assert_eq!(shared::command::open(&bytes, &keys).unwrap(), cmd);
        write(&dir, &format!("{name}.json"), &bytes);
        // the same under the bundle key (wrong_key_role) and pretty-printed
        let by_bundle = serde_json::to_vec(&cmd.sign(&bundle_key()).unwrap()).unwrap();
        write(&dir, &format!("{name}.bundle_key.json"), &by_bundle);
        write(&dir, &format!("{name}.pretty.json"), &serde_json::to_vec_pretty(&env).unwrap());
    }
    let bare = serde_json::to_vec(&sample_commands()[0].1).unwrap();
    write(&dir, "bare_command.json", &bare);
    write(&dir, "empty_signature.json", br#"{"command":"e30=","signature":""}"#);

    // command_signed: mode byte, then the command's bytes
    let dir = root.join("command_signed");
    for (name, cmd) in sample_commands() {
        let json = serde_json::to_vec(&cmd).unwrap();
        write(&dir, &format!("{name}.0"), &[&[0u8][..], &json].concat());
        write(&dir, &format!("{name}.pretty.0"), &[&[0u8][..], &serde_json::to_vec_pretty(&cmd).unwrap()].concat());
    }
    let json = serde_json::to_vec(&sample_commands()[0].1).unwrap();
    for mode in 1..4u8 {
        write(&dir, &format!("rollout_all.{mode}"), &[&[mode][..], &json].concat());
    }

    // manifest and bundle_validate: one bundle per measure
    let mdir = root.join("manifest");
    let vdir = root.join("bundle_validate");
    for (name, ncm, mondrian) in [
        ("nearest_centroid", NcmKind::NearestCentroid, false),
        ("knn", NcmKind::Knn { k: 3 }, true),
        ("nn_ratio", NcmKind::NearestNeighbourRatio, false),
    ] {
        let (m, reference, golden) = sample_bundle(ncm, mondrian);
        let mut pretty = serde_json::to_vec_pretty(&m).unwrap();
        pretty.push(b'\n');
        let compact = serde_json::to_vec(&m).unwrap();
        let files = validate_files(&m, &golden, &reference);
        shared::bundle::validate::validate(&m, Path::new(MANIFEST_PATH), |n| {
            files.get(n).copied()
        })
        .unwrap_or_else(|e| panic!("seed {name} is not valid: {e}"));
        assert!(manifest_checked(&pretty).is_some());
        write(&mdir, &format!("{name}.json"), &pretty);
        write(&mdir, &format!("{name}.compact.json"), &compact);
        write(&vdir, name, &join(&[&compact, &golden, &reference]));
    }
    // found by the manifest invariants: an f32 field beyond f32's range read as infinity,
    // was accepted, and its re-serialisation (null) was refused
    let (m, _, _) = sample_bundle(NcmKind::NearestCentroid, false);
    let text = String::from_utf8(serde_json::to_vec(&m).unwrap()).unwrap();
    let overflow = text.replacen("\"value_range\":[0.0,255.0]", "\"value_range\":[0.0,1e39]", 1);
    assert_ne!(overflow, text);
    assert!(manifest_checked(overflow.as_bytes()).is_none());
    write(&mdir, "regress_f32_overflow.json", overflow.as_bytes());
    // found by the manifest invariants: serde_json (without `float_roundtrip`) reads this
    // float, and then its own output for it, one ULP apart (tolerated, see same_manifest)
    let ulp = text.replacen("\"max_abs_diff\":0.02,", "\"max_abs_diff\":0.0218446744073709551615,", 1);
    assert_ne!(ulp, text);
    assert!(manifest_checked(ulp.as_bytes()).is_some());
    write(&mdir, "regress_float_ulp.json", ulp.as_bytes());
    println!("seeds written to {}", root.display());
}
