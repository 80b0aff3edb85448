//! Azure Blob Storage locations (`az://`, `abfs://`) on a real Azurite process on
//! loopback (see [`tests::AzuriteServer`]): a 50 MB multipart (block) upload read whole,
//! by range and by Azure's own client, a missing container and a wrong account key.

use object_store::ObjectStoreExt;
use shared::store;
use tests::{AzuriteServer, AZURITE_KEY};

#[test]
fn azurite_a_50_mb_multipart_upload_round_trips_with_ranged_reads() {
    let az = AzuriteServer::start();
    az.container("artifacts");
    let loc = az.open("az://artifacts/runs/r1", AZURITE_KEY);
    let (url, sha, len) = tests::multipart_round_trip(&loc, "model.bin");
    assert_eq!(url, "az://artifacts/runs/r1/model.bin");
    let rt = tokio::runtime::Runtime::new().unwrap();

    // the URL the registry records reads back through the environment's settings too
    // (here: the same container as a Hadoop-style abfs URL with an explicit endpoint)
    let abfs = az.open("abfs://artifacts/runs/r1", AZURITE_KEY);
    let back = rt
        .block_on(async {
            abfs.store
                .get(&abfs.child("model.bin"))
                .await?
                .bytes()
                .await
        })
        .unwrap();
    assert_eq!(store::sha256_hex(&back), sha);

    // Azure's own client sees one ordinary blob with the same bytes
    let got = az.client(&["sha256", "artifacts", "runs/r1/model.bin"]);
    assert!(
        got.contains(&sha) && got.contains(&len.to_string()),
        "{got}"
    );
}

#[test]
fn azurite_a_missing_container_and_a_wrong_key_are_errors_that_say_so() {
    let az = AzuriteServer::start();
    az.container("present");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("small.txt");
    std::fs::write(&file, b"hello").unwrap();

    let missing = az.open("az://absent/x", AZURITE_KEY);
    let e = rt
        .block_on(store::upload_file(&missing, &missing.child("f"), &file))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("az://absent/x/f") && e.contains("ContainerNotFound"),
        "{e}"
    );

    let wrong = az.open("az://present/x", "d3Jvbmcta2V5LXdyb25nLWtleQ==");
    let e = rt
        .block_on(store::upload_file(&wrong, &wrong.child("f"), &file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("az://present/x/f"), "{e}");
    assert!(
        e.contains("403") || e.contains("AuthorizationFailure"),
        "{e}"
    );
    // nothing was written
    let listed = az.client(&["list", "present"]);
    assert_eq!(listed.trim(), "[]");

    // a URL without a container is refused before any request
    let e = store::open("az:///x").unwrap_err().to_string();
    assert!(e.contains("no container"), "{e}");
}
