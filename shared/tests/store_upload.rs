//! Uploading local files through a location (`shared::store::upload_file`): what goes in
//! comes back out through the store, under the URL and sha256 the upload reports.

use object_store::ObjectStoreExt;
use shared::store::{self, MULTIPART_THRESHOLD};

/// Deterministic bytes that are not all equal (so a misplaced part would show).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn round_trip(len: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    let bytes = pattern(len);
    std::fs::write(&src, &bytes).unwrap();
    let dest = tmp.path().join("dest");
    let location = format!("file://{}", dest.display());
    let loc = store::open(&location).unwrap();
    let object = loc.child("run1/model.safetensors");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sha, size) = rt
        .block_on(store::upload_file(&loc, &object, &src))
        .unwrap();
    assert_eq!(size, len as u64);
    assert_eq!(sha, store::sha256_hex(&bytes));

    let back = rt
        .block_on(async { loc.store.get(&object).await?.bytes().await })
        .unwrap();
    assert_eq!(back.as_ref(), bytes.as_slice());
    assert_eq!(store::sha256_hex(&back), sha);

    let url = store::object_url(&loc, &object).unwrap();
    let canonical = std::fs::canonicalize(&dest).unwrap();
    assert_eq!(
        url,
        format!("file://{}/run1/model.safetensors", canonical.display())
    );
    let on_disk = std::fs::read(canonical.join("run1/model.safetensors")).unwrap();
    assert_eq!(on_disk, bytes);
}

#[test]
fn file_url_location_round_trip() {
    round_trip(100_000);
}

#[test]
fn large_file_goes_up_in_parts() {
    round_trip(MULTIPART_THRESHOLD as usize + 1_000_003);
}

#[test]
fn empty_file_round_trip() {
    round_trip(0);
}

#[test]
fn file_already_in_place_is_hashed_not_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let loc = store::open(tmp.path().to_str().unwrap()).unwrap();
    let run_dir = loc.local_dir().unwrap().join("run1");
    std::fs::create_dir_all(&run_dir).unwrap();
    let file = run_dir.join("report.json");
    let bytes = b"{\"ok\": true}\n".to_vec();
    std::fs::write(&file, &bytes).unwrap();
    let before = std::fs::metadata(&file).unwrap().modified().unwrap();

    let object = loc.child("run1/report.json");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sha, size) = rt
        .block_on(store::upload_file(&loc, &object, &file))
        .unwrap();
    assert_eq!((sha, size), (store::sha256_hex(&bytes), bytes.len() as u64));
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(
        store::local_file(&loc, &object).unwrap(),
        std::fs::canonicalize(&file).unwrap()
    );
}

#[test]
fn missing_file_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let loc = store::open(tmp.path().join("dest").to_str().unwrap()).unwrap();
    let missing = tmp.path().join("nope.bin");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(store::upload_file(&loc, &loc.child("x/nope.bin"), &missing))
        .unwrap_err();
    assert!(err.to_string().contains("nope.bin"), "{err}");
}

#[test]
fn unknown_scheme_names_the_location() {
    let err = store::open("ftp://example.org/artifacts").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ftp://example.org/artifacts"), "{text}");
    assert!(text.contains("unsupported scheme"), "{text}");
}
