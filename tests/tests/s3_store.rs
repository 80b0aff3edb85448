//! Locations on real S3 server processes on loopback (see [`tests::S3Server`]), each test
//! on Garage (a production server, strict) and on s3s-fs (light, lenient): a 50 MB
//! multipart upload with ranged reads, the object URL, a missing bucket and wrong
//! credentials.

use object_store::ObjectStoreExt;
use shared::store;
use tests::{S3Kind, S3Server};

fn multipart_round_trip(kind: S3Kind) {
    let s3 = S3Server::start_kind(kind);
    s3.bucket("artifacts");
    let loc = s3.open("s3://artifacts/runs/r1", &s3.secret);
    let (url, _, size) = tests::multipart_round_trip(&loc, "model.bin");
    assert_eq!(url, "s3://artifacts/runs/r1/model.bin");
    if kind == S3Kind::S3sFs {
        // the server holds exactly the file, under the location's prefix
        let on_disk = s3.root.path().join("artifacts/runs/r1/model.bin");
        assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), size);
    }
}

fn missing_bucket_and_wrong_credentials(kind: S3Kind) {
    let s3 = S3Server::start_kind(kind);
    s3.bucket("present");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("small.txt");
    std::fs::write(&file, b"hello").unwrap();

    let missing = s3.open("s3://absent/x", &s3.secret);
    let e = rt
        .block_on(async { missing.store.get(&missing.child("f")).await.map(|_| ()) })
        .unwrap_err()
        .to_string();
    eprintln!("{kind:?}, missing bucket: {e}");
    match kind {
        // a production server names the bucket, and refuses writes into it too
        S3Kind::Garage => {
            assert!(e.contains("NoSuchBucket"), "{e}");
            let e = rt
                .block_on(store::upload_file(&missing, &missing.child("f"), &file))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("s3://absent/x/f") && e.contains("NoSuchBucket"),
                "{e}"
            );
        }
        // s3s-fs answers NoSuchKey (and would create the bucket on a write)
        S3Kind::S3sFs => assert!(
            e.contains("NoSuchBucket") || e.contains("404") || e.contains("not found"),
            "{e}"
        ),
    }

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
    // nothing was written
    let right = s3.open("s3://present/x", &s3.secret);
    let listed = rt
        .block_on(async { right.store.list_with_delimiter(Some(&right.prefix)).await })
        .unwrap();
    assert!(listed.objects.is_empty(), "{listed:?}");

    // a URL without a bucket is refused before any request
    let e = store::open("s3:///nobucket").unwrap_err().to_string();
    assert!(e.contains("no bucket"), "{e}");
}

#[test]
fn garage_a_50_mb_multipart_upload_round_trips_with_ranged_reads() {
    multipart_round_trip(S3Kind::Garage);
}

#[test]
fn garage_a_missing_bucket_and_wrong_credentials_are_errors_that_say_so() {
    missing_bucket_and_wrong_credentials(S3Kind::Garage);
}

#[test]
fn s3s_fs_a_50_mb_multipart_upload_round_trips_with_ranged_reads() {
    multipart_round_trip(S3Kind::S3sFs);
}

#[test]
fn s3s_fs_a_missing_bucket_and_wrong_credentials_are_errors_that_say_so() {
    missing_bucket_and_wrong_credentials(S3Kind::S3sFs);
}
