//! Object-store locations: where datasets, run artifacts and bundles live.
//!
//! Everything is written through the `object_store` crate so that the local filesystem
//! (the embedded default) and S3-compatible servers share one code path. A location is a
//! plain directory path or a URL (`file:///...`; cloud schemes come with the cloud issue).

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

/// Failure to resolve a location to a store.
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
}

/// A store plus the prefix inside it that a location names.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The location as the user wrote it, for messages.
    pub display: String,
}

impl Location {
    /// The object path of `name` under this location's prefix (`name` may contain `/`).
    pub fn child(&self, name: &str) -> Path {
        name.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }

    /// A location one or more levels below this one.
    pub fn sub(&self, name: &str) -> Location {
        Location {
            store: self.store.clone(),
            prefix: self.child(name),
            display: format!("{}/{}", self.display.trim_end_matches('/'), name),
        }
    }
}

/// Opens a directory path or URL. Local directories are created if missing, so that a
/// first `--out DIR` works.
pub fn open(location: &str) -> Result<Location, StoreError> {
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
        other => Err(err(format!(
            "unsupported scheme {other:?}: this build reads and writes local directories and file:// URLs"
        ))),
    }
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
    Ok(Location {
        store: Arc::new(store),
        prefix: Path::default(),
        display: location.to_string(),
    })
}
