//! The rollout state on disk: `<data>/rollout.json`, replaced atomically (write a temporary
//! file, fsync it, rename it over the old one, fsync the folder), so that a SIGKILL or a
//! power cut leaves either the old state or the new one, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::machine::{State, STATE_VERSION};

/// The state file's name in the data folder.
pub const STATE_FILE: &str = "rollout.json";
/// Largest state file read (a state is a few KB).
const MAX_STATE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {what} (the agent does not start on a state it cannot read: its anti-replay figures would be lost; restore the file or remove it knowingly)", path.display())]
    Corrupt { path: PathBuf, what: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the state in `data`; `None` when the device has none yet.
pub fn load(data: &Path) -> Result<Option<State>, PersistError> {
    use std::io::Read;
    let path = data.join(STATE_FILE);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut text = String::new();
    f.take(MAX_STATE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io(&path))?;
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(PersistError::Corrupt {
            path,
            what: format!("larger than {MAX_STATE_BYTES} bytes"),
        });
    }
    let state: State = serde_json::from_str(&text).map_err(|e| PersistError::Corrupt {
        path: path.clone(),
        what: e.to_string(),
    })?;
    if state.version != STATE_VERSION {
        return Err(PersistError::Corrupt {
            path,
            what: format!(
                "state version {}, this agent reads {STATE_VERSION}",
                state.version
            ),
        });
    }
    Ok(Some(state))
}

/// Replaces the state in `data` atomically and durably.
pub fn save(data: &Path, state: &State) -> Result<(), PersistError> {
    let path = data.join(STATE_FILE);
    let tmp = data.join(format!(".{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| PersistError::Corrupt {
        path: path.clone(),
        what: e.to_string(),
    })?;
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(data)
}

/// fsyncs a folder, so that a rename or a new entry in it survives a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::machine::ModelRef;

    #[test]
    fn a_saved_state_reads_back_and_a_bad_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut s = State::new(Some(ModelRef {
            model_id: "m".into(),
            manifest_sha256: "00".repeat(32),
            created_ms: 5,
        }));
        s.highest_sequence = 42;
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s.clone()));
        s.highest_sequence = 43;
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().highest_sequence, 43);
        // no temporary file is left behind
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);

        std::fs::write(dir.path().join(STATE_FILE), b"{\"version\": 1").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(STATE_FILE) && e.contains("anti-replay"), "{e}");
        let mut v = serde_json::to_value(&s).unwrap();
        v["version"] = 99.into();
        std::fs::write(dir.path().join(STATE_FILE), v.to_string()).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version 99"), "{e}");
    }
}
