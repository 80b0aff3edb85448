//! Locations on a real S3 server process on loopback (s3s-fs, see [`tests::S3Server`]):
//! a 50 MB multipart upload with ranged reads, the object URL, a missing bucket and wrong
//! credentials.

use object_store::ObjectStoreExt;
use shared::store;
use tests::{S3Server, S3_SECRET};

#[test]
fn a_50_mb_multipart_upload_round_trips_with_ranged_reads() {
    let s3 = S3Server::start();
    s3.bucket("artifacts");
    let loc = s3.open("s3://artifacts/runs/r1", S3_SECRET);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.bin");
    let len: usize = 50 * 1024 * 1024 + 123;
    let bytes: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    assert!(len as u64 > store::MULTIPART_THRESHOLD);

    let object = loc.child("model.bin");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sha, size) = rt
        .block_on(store::upload_file(&loc, &object, &file))
        .unwrap();
    assert_eq!(size, len as u64);
    assert_eq!(sha, store::sha256_hex(&bytes));
    assert_eq!(
        store::object_url(&loc, &object).unwrap(),
        "s3://artifacts/runs/r1/model.bin"
    );
    // the server holds exactly the file, under the location's prefix
    let on_disk = s3.root.path().join("artifacts/runs/r1/model.bin");
    assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), len as u64);

    let (head, range) = rt
        .block_on(async {
            let head = loc.store.head(&object).await?;
            let range = loc.store.get_range(&object, 20_000_000..20_001_000).await?;
            Ok::<_, object_store::Error>((head, range))
        })
        .unwrap();
    assert_eq!(head.size, len as u64);
    assert_eq!(range.as_ref(), &bytes[20_000_000..20_001_000]);
    let back = rt
        .block_on(async { loc.store.get(&object).await?.bytes().await })
        .unwrap();
    assert_eq!(store::sha256_hex(&back), sha);
}

#[test]
fn a_missing_bucket_and_wrong_credentials_are_errors_that_say_so() {
    let s3 = S3Server::start();
    s3.bucket("present");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("small.txt");
    std::fs::write(&file, b"hello").unwrap();

    let missing = s3.open("s3://absent/x", S3_SECRET);
    let e = rt
        .block_on(async { missing.store.get(&missing.child("f")).await.map(|_| ()) })
        .unwrap_err();
    eprintln!("missing bucket: {e}");
    let e = e.to_string();
    assert!(
        e.contains("NoSuchBucket") || e.contains("404") || e.contains("not found"),
        "{e}"
    );

    let wrong = s3.open("s3://present/x", "not-the-secret");
    let e = rt
        .block_on(store::upload_file(&wrong, &wrong.child("f"), &file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("s3://present/x/f"), "{e}");
    assert!(
        e.contains("SignatureDoesNotMatch") || e.contains("403") || e.contains("Forbidden"),
        "{e}"
    );
    assert!(!s3.root.path().join("present/x/f").exists());

    // a URL without a bucket is refused before any request
    let e = store::open("s3:///nobucket").unwrap_err().to_string();
    assert!(e.contains("no bucket"), "{e}");
}
