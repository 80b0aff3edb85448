//! Object-store locations: where datasets, run artifacts and bundles live.
//!
//! Everything is written through the `object_store` crate so that the local filesystem
//! (the embedded default) and cloud stores share one code path. A location is a plain
//! directory path or a URL:
//!
//! - `file:///...`: a local directory;
//! - `s3://BUCKET/PREFIX`: AWS S3 and any S3-compatible server (MinIO, Garage, s3s),
//!   configured by the standard environment variables `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` (a custom server; requests
//!   are path-style unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` is true) and `AWS_ALLOW_HTTP`
//!   (a plain-HTTP endpoint);
//! - `az://CONTAINER/PREFIX`, `azure://...`, `abfs[s]://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX`
//!   and MLflow's `wasb[s]://CONTAINER@ACCOUNT.blob.core.windows.net/PREFIX`: Azure Blob
//!   Storage, configured by `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY` (or
//!   `AZURE_STORAGE_SAS_KEY`, `AZURE_STORAGE_CLIENT_ID`/`_SECRET`/`AZURE_STORAGE_TENANT_ID`,
//!   ...) and, for the Azurite emulator, `AZURE_STORAGE_USE_EMULATOR=true` with
//!   `AZURITE_BLOB_STORAGE_URL`;
//! - `gs://BUCKET/PREFIX`: Google Cloud Storage, configured by `GOOGLE_SERVICE_ACCOUNT`
//!   (a key file), `GOOGLE_SERVICE_ACCOUNT_KEY` (its JSON), application default
//!   credentials, or the instance's metadata server.
//!
//! Besides opening locations, this module names objects by URL ([`object_url`]) and
//! uploads local files into a location ([`upload_file`]), hashing them on the way.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use url::{Position, Url};

/// Files larger than this are uploaded in parts ([`ObjectStoreExt::put_multipart`]).
pub const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// Size of each part of a multipart upload (S3 needs at least 5 MiB but the last).
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Failure to resolve a location to a store, or to move data in or out of it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("location {location:?}: {what}")]
    Location { location: String, what: String },
    #[error("location {location:?}: {source}")]
    Backend {
        location: String,
        #[source]
        source: object_store::Error,
    },
    /// A local file that was to be uploaded or hashed could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing an object failed; `url` names the object.
    #[error("uploading {} to {url}: {source}", file.display())]
    Upload {
        file: PathBuf,
        url: String,
        #[source]
        source: object_store::Error,
    },
    /// An object path that has no URL in this location's scheme.
    #[error("location {location:?}: object {path:?} has no URL")]
    ObjectUrl { location: String, path: String },
}

/// The root of a location's store, from which object URLs are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// A local directory, absolute and canonical: the store's object `a/b` is `<dir>/a/b`.
    Dir(PathBuf),
    /// A remote store's base URL without a trailing `/`, e.g. `s3://bucket` (object
    /// `a/b` is `s3://bucket/a/b`) or `abfss://container@account.dfs.core.windows.net`.
    Url(String),
}

/// A store plus the prefix inside it that a location names.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The location as the user wrote it, for messages.
    pub display: String,
    /// Where the store's objects live, for [`object_url`] and [`Location::local_dir`].
    pub root: Root,
}

/// `base` followed by the non-empty `/`-separated parts of `name`.
fn join_parts(base: &Path, name: &str) -> Path {
    name.split('/')
        .filter(|p| !p.is_empty())
        .fold(base.clone(), |p, part| p.join(part))
}

impl Location {
    /// The object path of `name` under this location's prefix (`name` may contain `/`).
    pub fn child(&self, name: &str) -> Path {
        join_parts(&self.prefix, name)
    }

    /// A location one or more levels below this one.
    pub fn sub(&self, name: &str) -> Location {
        Location {
            store: self.store.clone(),
            prefix: self.child(name),
            display: format!("{}/{}", self.display.trim_end_matches('/'), name),
            root: self.root.clone(),
        }
    }

    /// The local directory this location names (its prefix under the store's root), or
    /// `None` for a remote store.
    pub fn local_dir(&self) -> Option<PathBuf> {
        match &self.root {
            Root::Dir(_) => local_file(self, &self.prefix),
            Root::Url(_) => None,
        }
    }
}

/// Opens a directory path or URL. Local directories are created if missing, so that a
/// first `--out DIR` works. Cloud settings come from the environment (see the module docs).
pub fn open(location: &str) -> Result<Location, StoreError> {
    open_with_options(location, &[])
}

/// The cloud services a location URL can name, by scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cloud {
    S3,
    Azure,
    Gcs,
}

impl Cloud {
    fn of(scheme: &str) -> Option<Cloud> {
        match scheme {
            "s3" | "s3a" => Some(Cloud::S3),
            "az" | "azure" | "abfs" | "abfss" | "wasb" | "wasbs" => Some(Cloud::Azure),
            "gs" => Some(Cloud::Gcs),
            _ => None,
        }
    }

    /// How a URL of this service is written, for messages.
    fn example(self) -> &'static str {
        match self {
            Cloud::S3 => "s3://BUCKET/PREFIX",
            Cloud::Azure => {
                "az://CONTAINER/PREFIX or abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX"
            }
            Cloud::Gcs => "gs://BUCKET/PREFIX",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cloud::S3 => "S3",
            Cloud::Azure => "Azure",
            Cloud::Gcs => "GCS",
        }
    }
}

/// [`open`] with cloud settings that override the environment's, as `object_store`'s
/// configuration key names of the location's service and their values:
/// `AmazonS3ConfigKey` names for `s3://` (`aws_access_key_id`, `aws_secret_access_key`,
/// `aws_endpoint`, `aws_allow_http`, `aws_region`, ...), `AzureConfigKey` names for Azure
/// URLs (`azure_storage_account_name`, `azure_storage_account_key`,
/// `azure_storage_use_emulator`, ...), `GoogleConfigKey` names for `gs://`
/// (`google_service_account`, `google_base_url`, ...). Ignored for local locations.
pub fn open_with_options(location: &str, options: &[(&str, &str)]) -> Result<Location, StoreError> {
    open_configured(location, options, None)
}

/// [`open_with_options`] with `object_store`'s own request retries set by `retry`: a caller
/// that retries, times and resumes requests itself (the agent's bundle download) passes
/// `max_retries: 0`, so that a failure reaches it at once instead of after minutes of
/// hidden retries. Ignored for local locations.
pub fn open_with_retry(
    location: &str,
    options: &[(&str, &str)],
    retry: object_store::RetryConfig,
) -> Result<Location, StoreError> {
    open_configured(location, options, Some(retry))
}

/// Makes ring the process's rustls provider unless one is installed already. HTTPS to the
/// stores goes through reqwest built without a provider of its own (its default pulls
/// aws-lc-rs, whose C build fails for armv7 devices); every HTTP client of ours is built
/// after this. Idempotent and cheap.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // an Err means another thread installed one first: also fine
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn open_configured(
    location: &str,
    options: &[(&str, &str)],
    retry: Option<object_store::RetryConfig>,
) -> Result<Location, StoreError> {
    install_crypto_provider();
    let err = |what: String| StoreError::Location {
        location: location.to_string(),
        what,
    };
    let looks_like_url = location.contains("://");
    if !looks_like_url {
        return open_dir(std::path::Path::new(location), location);
    }
    let url = Url::parse(location).map_err(|e| err(format!("not a valid URL: {e}")))?;
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|_| err("file URL without an absolute path".into()))?;
        return open_dir(&path, location);
    }
    let cloud = Cloud::of(url.scheme()).ok_or_else(|| {
        err(format!(
            "unsupported scheme {:?}: use a directory, a file:// URL, s3://BUCKET/PREFIX, \
             az://CONTAINER/PREFIX (or abfss://, wasbs://) or gs://BUCKET/PREFIX",
            url.scheme()
        ))
    })?;
    open_cloud(cloud, &url, location, options, retry)
}

/// `options` as `object_store` configuration keys of type `K`.
fn config_keys<'a, K>(
    cloud: Cloud,
    options: &[(&str, &'a str)],
    location: &str,
) -> Result<Vec<(K, &'a str)>, StoreError>
where
    K: std::str::FromStr,
    K::Err: std::fmt::Display,
{
    options
        .iter()
        .map(|(key, value)| {
            key.parse::<K>()
                .map(|k| (k, *value))
                .map_err(|e| StoreError::Location {
                    location: location.to_string(),
                    what: format!("{} setting {key:?}: {e}", cloud.name()),
                })
        })
        .collect()
}

fn open_cloud(
    cloud: Cloud,
    url: &Url,
    location: &str,
    options: &[(&str, &str)],
    retry: Option<object_store::RetryConfig>,
) -> Result<Location, StoreError> {
    let err = |what: String| StoreError::Location {
        location: location.to_string(),
        what,
    };
    let backend = |source| StoreError::Backend {
        location: location.to_string(),
        source,
    };
    // Credentials never go in a location: it is logged, shown and stored in the registry.
    if url.password().is_some() || (cloud != Cloud::Azure && !url.username().is_empty()) {
        let mut shown = url.clone();
        if url.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        return Err(StoreError::Location {
            location: shown.to_string(),
            what: format!(
                "a {} location names no user or password: write {} and give credentials in the environment",
                cloud.name(),
                cloud.example()
            ),
        });
    }
    // the bucket (S3, GCS) or container (Azure): the host, or the user of abfs/wasb URLs
    let container = if url.username().is_empty() {
        url.host_str().unwrap_or_default()
    } else {
        url.username()
    };
    if container.is_empty() {
        let what = if cloud == Cloud::Azure {
            "container"
        } else {
            "bucket"
        };
        return Err(err(format!("no {what}: write {}", cloud.example())));
    }
    // the service's part of the URL: everything before the path, kept as written
    let base = &url[..Position::BeforePath];
    let store: Arc<dyn ObjectStore> = match cloud {
        Cloud::S3 => {
            let mut b = AmazonS3Builder::from_env().with_bucket_name(container);
            if let Some(r) = retry.clone() {
                b = b.with_retry(r);
            }
            for (k, v) in config_keys(cloud, options, location)? {
                b = b.with_config(k, v);
            }
            Arc::new(b.build().map_err(backend)?)
        }
        Cloud::Azure => {
            // object_store reads abfs[s]:// with a blob or dfs host; MLflow's wasb[s]://
            // names the same container and account
            let url_for_builder = match url.scheme() {
                "wasb" | "wasbs" => format!("abfss://{}", &url[Position::BeforeUsername..]),
                _ => url.to_string(),
            };
            let mut b = MicrosoftAzureBuilder::from_env().with_url(url_for_builder);
            if let Some(r) = retry.clone() {
                b = b.with_retry(r);
            }
            for (k, v) in config_keys(cloud, options, location)? {
                b = b.with_config(k, v);
            }
            Arc::new(b.build().map_err(backend)?)
        }
        Cloud::Gcs => {
            let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(container);
            if let Some(r) = retry.clone() {
                b = b.with_retry(r);
            }
            for (k, v) in config_keys(cloud, options, location)? {
                b = b.with_config(k, v);
            }
            Arc::new(b.build().map_err(backend)?)
        }
    };
    Ok(Location {
        store,
        prefix: join_parts(&Path::default(), url.path()),
        display: location.to_string(),
        root: Root::Url(base.to_string()),
    })
}

fn open_dir(dir: &std::path::Path, location: &str) -> Result<Location, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Location {
        location: location.to_string(),
        what: format!("cannot create directory: {e}"),
    })?;
    let store = LocalFileSystem::new_with_prefix(dir).map_err(|source| StoreError::Backend {
        location: location.to_string(),
        source,
    })?;
    let root = std::fs::canonicalize(dir).map_err(|e| StoreError::Location {
        location: location.to_string(),
        what: format!("cannot resolve directory: {e}"),
    })?;
    Ok(Location {
        store: Arc::new(store),
        prefix: Path::default(),
        display: location.to_string(),
        root: Root::Dir(root),
    })
}

/// The `file://` URL of object `path` under a local root, built the way `LocalFileSystem`
/// maps object paths to files (each part a URL path segment).
fn dir_object_url(dir: &std::path::Path, path: &Path) -> Option<Url> {
    let mut url = Url::from_directory_path(dir).ok()?;
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(path.parts());
    Some(url)
}

/// The local file that holds object `path` (a full object path, e.g. from
/// [`Location::child`]), or `None` when the location is not local.
pub fn local_file(loc: &Location, path: &Path) -> Option<PathBuf> {
    match &loc.root {
        Root::Dir(dir) => dir_object_url(dir, path)?.to_file_path().ok(),
        Root::Url(_) => None,
    }
}

/// The URL of object `path` (a full object path, e.g. from [`Location::child`]) in `loc`'s
/// store: `file:///abs/dir/<path>` for a local directory, `<scheme>://<bucket>/<path>` for
/// a remote store (whose bucket-level prefix is part of `path`).
pub fn object_url(loc: &Location, path: &Path) -> Result<String, StoreError> {
    match &loc.root {
        Root::Dir(dir) => {
            dir_object_url(dir, path)
                .map(String::from)
                .ok_or_else(|| StoreError::ObjectUrl {
                    location: loc.display.clone(),
                    path: path.to_string(),
                })
        }
        Root::Url(base) => Ok(if path.as_ref().is_empty() {
            base.clone()
        } else {
            format!("{base}/{path}")
        }),
    }
}

/// sha256 (lowercase hex) of `bytes`: the digest [`upload_file`] reports.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Uploads local `file` to object `path` (a full object path, e.g. from
/// [`Location::child`]) of `loc` and returns its sha256 (lowercase hex) and size in bytes,
/// hashing while reading. Files up to [`MULTIPART_THRESHOLD`] go up with one `put`, larger
/// ones with a multipart upload in parts of 8 MiB, so memory stays bounded.
///
/// When the object is the file itself (a local location whose directory already holds it,
/// compared by canonical path), nothing is copied; the file is only hashed.
pub async fn upload_file(
    loc: &Location,
    path: &Path,
    file: &std::path::Path,
) -> Result<(String, u64), StoreError> {
    let read_err = |source| StoreError::Read {
        path: file.to_path_buf(),
        source,
    };
    let source = std::fs::canonicalize(file).map_err(read_err)?;
    let url = object_url(loc, path)?;
    let upload_err = |source| StoreError::Upload {
        file: file.to_path_buf(),
        url: url.clone(),
        source,
    };
    let target = local_file(loc, path).and_then(|p| std::fs::canonicalize(p).ok());
    let mut reader = ChunkReader::open(&source).map_err(read_err)?;
    if target.as_ref() == Some(&source) {
        while !reader.next_chunk().await.map_err(read_err)?.is_empty() {}
        return Ok(reader.finish());
    }
    if reader.len <= MULTIPART_THRESHOLD {
        let mut bytes = Vec::with_capacity(reader.len as usize);
        loop {
            let chunk = reader.next_chunk().await.map_err(read_err)?;
            if chunk.is_empty() {
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        loc.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(upload_err)?;
        return Ok(reader.finish());
    }
    let mut upload = loc.store.put_multipart(path).await.map_err(upload_err)?;
    let parts = async {
        loop {
            let chunk = reader.next_chunk().await.map_err(read_err)?;
            if chunk.is_empty() {
                break;
            }
            upload
                .put_part(PutPayload::from(chunk))
                .await
                .map_err(upload_err)?;
        }
        Ok(())
    }
    .await;
    match parts {
        Ok(()) => {
            upload.complete().await.map_err(upload_err)?;
            Ok(reader.finish())
        }
        Err(e) => {
            if let Err(abort) = upload.abort().await {
                tracing::warn!("aborting the upload to {url}: {abort}");
            }
            Err(e)
        }
    }
}

/// Reads a file in [`PART_SIZE`] chunks off the async runtime's threads, hashing them.
struct ChunkReader {
    file: Option<std::fs::File>,
    len: u64,
    read: u64,
    hasher: Sha256,
}

impl ChunkReader {
    fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file: Some(file),
            len,
            read: 0,
            hasher: Sha256::new(),
        })
    }

    /// The next chunk (full unless it is the last); empty at the end of the file.
    async fn next_chunk(&mut self) -> std::io::Result<Vec<u8>> {
        let Some(mut file) = self.file.take() else {
            return Ok(vec![]);
        };
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(PART_SIZE);
            let got = (&mut file).take(PART_SIZE as u64).read_to_end(&mut chunk);
            (file, got.map(|_| chunk))
        })
        .await
        .map_err(std::io::Error::other)?;
        let chunk = chunk?;
        if !chunk.is_empty() {
            self.file = Some(file);
            self.hasher.update(&chunk);
            self.read += chunk.len() as u64;
        }
        Ok(chunk)
    }

    /// The sha256 (hex) and size of everything read.
    fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.read)
    }
}

/// Reads the whole object at `url`: a URL as [`object_url`] makes it (`file:///...`,
/// `s3://BUCKET/KEY`, `az://CONTAINER/KEY`, `gs://BUCKET/KEY`, ... with the environment's
/// settings), or a local path. The object's bucket (a remote store) or its own directory
/// (a local file) is opened as the location, so a URL from the registry is enough.
pub async fn read_url(url: &str) -> Result<Vec<u8>, StoreError> {
    let err = |what: String| StoreError::Location {
        location: url.to_string(),
        what,
    };
    let parsed = if url.contains("://") {
        Some(Url::parse(url).map_err(|e| err(format!("not a valid URL: {e}")))?)
    } else {
        None
    };
    let (loc, object) = match parsed {
        Some(parsed) if parsed.scheme() != "file" => {
            if Cloud::of(parsed.scheme()).is_none() {
                return Err(err(format!(
                    "unsupported scheme {:?}: this build reads local paths and file://, s3://, \
                     az://, abfs[s]://, wasb[s]:// and gs:// URLs",
                    parsed.scheme()
                )));
            }
            // the bucket is the location, the rest of the URL the object
            let loc = open(&parsed[..Position::BeforePath])?;
            let object = loc.child(parsed.path());
            if object.as_ref().is_empty() {
                return Err(err("names no object".into()));
            }
            (loc, object)
        }
        parsed => {
            let file = match parsed {
                Some(parsed) => parsed
                    .to_file_path()
                    .map_err(|_| err("file URL without an absolute path".into()))?,
                None => PathBuf::from(url),
            };
            let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
                return Err(err("names no file".into()));
            };
            let dir_text = dir.display().to_string();
            let loc = open_dir(dir, &dir_text)?;
            let object = loc.child(&name.to_string_lossy());
            (loc, object)
        }
    };
    let backend = |source| StoreError::Backend {
        location: url.to_string(),
        source,
    };
    let got = loc.store.get(&object).await.map_err(backend)?;
    Ok(got.bytes().await.map_err(backend)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Azure location with explicit credentials (no environment, no request made).
    fn azure(location: &str) -> Result<Location, StoreError> {
        open_with_options(
            location,
            &[
                ("azure_storage_account_name", "acct"),
                ("azure_storage_account_key", "a2V5"),
            ],
        )
    }

    #[test]
    fn azure_urls_name_their_container_prefix_and_objects() {
        let loc = azure("az://models/fleet/v1").unwrap();
        assert_eq!(loc.root, Root::Url("az://models".into()));
        assert_eq!(loc.prefix.as_ref(), "fleet/v1");
        assert_eq!(
            object_url(&loc, &loc.child("a/b.bin")).unwrap(),
            "az://models/fleet/v1/a/b.bin"
        );

        let loc = azure("abfss://models@acct.dfs.core.windows.net/fleet").unwrap();
        assert_eq!(
            loc.root,
            Root::Url("abfss://models@acct.dfs.core.windows.net".into())
        );
        assert_eq!(loc.prefix.as_ref(), "fleet");
        assert!(loc.local_dir().is_none());

        // MLflow's artifact URIs for Azure
        let loc = azure("wasbs://mlflow@acct.blob.core.windows.net/1/abc/artifacts").unwrap();
        assert_eq!(
            object_url(&loc, &loc.child("model.safetensors")).unwrap(),
            "wasbs://mlflow@acct.blob.core.windows.net/1/abc/artifacts/model.safetensors"
        );
    }

    #[test]
    fn gcs_urls_name_their_bucket_prefix_and_objects() {
        let loc = open_with_options("gs://edgecp/runs", &[("google_bearer_token", "t")]).unwrap();
        assert_eq!(loc.root, Root::Url("gs://edgecp".into()));
        assert_eq!(
            object_url(&loc, &loc.child("r1/report.json")).unwrap(),
            "gs://edgecp/runs/r1/report.json"
        );
    }

    #[test]
    fn cloud_urls_without_a_bucket_or_with_unknown_settings_are_refused() {
        for (url, want) in [
            ("s3:///x", "no bucket: write s3://BUCKET/PREFIX"),
            ("gs:///x", "no bucket: write gs://BUCKET/PREFIX"),
            ("az:///x", "no container: write az://CONTAINER/PREFIX"),
        ] {
            let e = open(url).unwrap_err().to_string();
            assert!(e.contains(url) && e.contains(want), "{url}: {e}");
        }
        let e = open_with_options("az://c/x", &[("aws_region", "us-east-1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Azure setting \"aws_region\""), "{e}");
        for url in [
            "s3://key:secret@bucket/x",
            "az://c:key@acct.dfs.core.windows.net/x",
        ] {
            let e = open(url).unwrap_err().to_string();
            assert!(e.contains("names no user or password"), "{e}");
            assert!(!e.contains("secret") && !e.contains(":key@"), "{e}");
        }
        let e = open("ftp://host/x").unwrap_err().to_string();
        assert!(
            e.contains("unsupported scheme \"ftp\"") && e.contains("gs://"),
            "{e}"
        );
    }

    #[test]
    fn read_url_refuses_unknown_schemes_and_bucket_urls() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt.block_on(read_url("ftp://h/x")).unwrap_err().to_string();
        assert!(e.contains("unsupported scheme \"ftp\""), "{e}");
        let e = rt
            .block_on(read_url("gs://bucket"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no object"), "{e}");
    }
}
