//! Object-store locations: where datasets, run artifacts and bundles live.
//!
//! Everything is written through the `object_store` crate so that the local filesystem
//! (the embedded default) and S3-compatible servers share one code path. A location is a
//! plain directory path or a URL: `file:///...`, or `s3://BUCKET/PREFIX` for AWS S3 and any
//! S3-compatible server (MinIO, Garage, s3s), configured by the standard environment
//! variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`
//! (a custom server; requests are path-style unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` is
//! true) and `AWS_ALLOW_HTTP` (a plain-HTTP endpoint).
//!
//! Besides opening locations, this module names objects by URL ([`object_url`]) and
//! uploads local files into a location ([`upload_file`]), hashing them on the way.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use url::Url;

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
    /// `a/b` is `s3://bucket/a/b`).
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
/// first `--out DIR` works. S3 settings come from the environment (see the module docs).
pub fn open(location: &str) -> Result<Location, StoreError> {
    open_with_options(location, &[])
}

/// [`open`] with S3 settings that override the environment's: `object_store`'s
/// `AmazonS3ConfigKey` names (`aws_access_key_id`, `aws_secret_access_key`, `aws_endpoint`,
/// `aws_allow_http`, `aws_region`, ...) and their values. Ignored for local locations.
pub fn open_with_options(location: &str, s3: &[(&str, &str)]) -> Result<Location, StoreError> {
    let err = |what: String| StoreError::Location {
        location: location.to_string(),
        what,
    };
    let looks_like_url = location.contains("://");
    if !looks_like_url {
        return open_dir(std::path::Path::new(location), location);
    }
    let url = Url::parse(location).map_err(|e| err(format!("not a valid URL: {e}")))?;
    match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|_| err("file URL without an absolute path".into()))?;
            open_dir(&path, location)
        }
        "s3" => open_s3(&url, location, s3),
        other => Err(err(format!(
            "unsupported scheme {other:?}: use a directory, a file:// URL or s3://BUCKET/PREFIX"
        ))),
    }
}

fn open_s3(url: &Url, location: &str, options: &[(&str, &str)]) -> Result<Location, StoreError> {
    let err = |what: String| StoreError::Location {
        location: location.to_string(),
        what,
    };
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| err("no bucket: write s3://BUCKET/PREFIX".into()))?;
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (key, value) in options {
        let key = key
            .parse()
            .map_err(|e| err(format!("S3 setting {key:?}: {e}")))?;
        builder = builder.with_config(key, *value);
    }
    let store = builder.build().map_err(|source| StoreError::Backend {
        location: location.to_string(),
        source,
    })?;
    let prefix = join_parts(&Path::default(), url.path());
    Ok(Location {
        store: Arc::new(store),
        prefix,
        display: location.to_string(),
        root: Root::Url(format!("s3://{bucket}")),
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
/// `s3://BUCKET/KEY` with the environment's S3 settings), or a
/// local path. The object's own directory is opened as the location, so a URL from the
/// registry is enough.
pub async fn read_url(url: &str) -> Result<Vec<u8>, StoreError> {
    let err = |what: String| StoreError::Location {
        location: url.to_string(),
        what,
    };
    let (loc, object) = if url.starts_with("s3://") {
        // the bucket is the location, the rest of the URL the object
        let parsed = Url::parse(url).map_err(|e| err(format!("not a valid URL: {e}")))?;
        let bucket = parsed.host_str().unwrap_or_default();
        let loc = open(&format!("s3://{bucket}"))?;
        let object = loc.child(parsed.path());
        if object.as_ref().is_empty() {
            return Err(err("names no object".into()));
        }
        (loc, object)
    } else {
        let file = if url.contains("://") {
            let parsed = Url::parse(url).map_err(|e| err(format!("not a valid URL: {e}")))?;
            if parsed.scheme() != "file" {
                return Err(err(format!(
                    "unsupported scheme {:?}: this build reads local paths, file:// and s3:// URLs",
                    parsed.scheme()
                )));
            }
            parsed
                .to_file_path()
                .map_err(|_| err("file URL without an absolute path".into()))?
        } else {
            PathBuf::from(url)
        };
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            return Err(err("names no file".into()));
        };
        let dir_text = dir.display().to_string();
        let loc = open_dir(dir, &dir_text)?;
        let object = loc.child(&name.to_string_lossy());
        (loc, object)
    };
    let backend = |source| StoreError::Backend {
        location: url.to_string(),
        source,
    };
    let got = loc.store.get(&object).await.map_err(backend)?;
    Ok(got.bytes().await.map_err(backend)?.to_vec())
}
