//! Files the broker reads at start and again on request (SIGHUP): the password files and the
//! ACL file. Clients being checked see either the old or the new contents, never a mix.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The parsed contents of a file, replaceable while the broker runs.
#[derive(Debug)]
pub(crate) struct FileBacked<T> {
    path: PathBuf,
    current: RwLock<Arc<T>>,
}

impl<T> FileBacked<T> {
    pub fn new(path: &Path, value: T) -> Self {
        Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current contents.
    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `f` on the current contents (without cloning the `Arc`: the publish path).
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Installs new contents.
    pub fn replace(&self, value: T) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}
