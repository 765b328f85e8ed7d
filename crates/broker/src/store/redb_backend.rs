//! [`Backend`] on redb, a copy-on-write B-tree in one file: each batch is one write
//! transaction (atomic; a crash leaves the last committed state, checked by checksums), a
//! sync is a commit with immediate durability, which also makes the batches committed
//! without it durable. Freed pages are reused, so the file stays as large as the live data.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Backend, Op, StoreError, Table, Visit};

/// The file in the data directory.
pub const FILE: &str = "sagitta.redb";

/// Page cache. redb's default (1 GiB) would make a large store's start take that much
/// memory; reads only happen at start, so a small cache costs nothing.
const CACHE: usize = 32 * 1024 * 1024;

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// The broker's redb database.
pub struct RedbBackend {
    db: Database,
    path: PathBuf,
}

impl RedbBackend {
    /// Opens (creating if needed) the database file in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        super::ensure_dir(dir)?;
        let path = dir.join(FILE);
        let db = Database::builder()
            .set_cache_size(CACHE)
            .create(&path)
            .map_err(|e| StoreError::Backend {
                path: path.clone(),
                message: open_hint(&e.into()),
            })?;
        let mut backend = Self { db, path };
        // Every table exists from the start, so that reading never meets a missing one.
        backend.transaction(Durability::Immediate, |_| Ok(()))?;
        Ok(backend)
    }

    fn error(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Backend {
            path: self.path.clone(),
            message: e.into().to_string(),
        }
    }

    /// Runs `f` in a write transaction with every table open, and commits.
    fn transaction(
        &mut self,
        durability: Durability,
        f: impl FnOnce(&mut [redb::Table<'_, &'static [u8], &'static [u8]>]) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.error(e))?;
        tx.set_durability(durability).map_err(|e| self.error(e))?;
        {
            let mut tables = Vec::with_capacity(Table::ALL.len());
            for table in Table::ALL {
                tables.push(
                    tx.open_table(definition(table))
                        .map_err(|e| self.error(e))?,
                );
            }
            f(&mut tables).map_err(|e| self.error(e))?;
        }
        tx.commit().map_err(|e| self.error(e))
    }
}

/// What went wrong opening, and what to do about it.
fn open_hint(e: &redb::Error) -> String {
    match e {
        redb::Error::DatabaseAlreadyOpen => {
            "the store is in use by another process (another broker?); stop it or set a \
             different `data_dir`"
                .into()
        }
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            format!("{io}: the disk is full; free space and start again")
        }
        other => format!(
            "{other}; the file cannot be read (corrupt, or not a Sagitta store): move it away to \
             start empty, or start with --memory"
        ),
    }
}

/// The first key after every key that starts with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Backend for RedbBackend {
    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        self.transaction(Durability::None, |tables| {
            for op in ops {
                match op {
                    Op::Put(t, k, v) => {
                        tables[*t as usize].insert(k.as_slice(), v.as_slice())?;
                    }
                    Op::Delete(t, k) => {
                        tables[*t as usize].remove(k.as_slice())?;
                    }
                    Op::DeletePrefix(t, prefix) => {
                        let table = &mut tables[*t as usize];
                        match prefix_end(prefix) {
                            Some(end) => {
                                table.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)?
                            }
                            None => table.retain_in(prefix.as_slice().., |_, _| false)?,
                        }
                    }
                }
            }
            Ok(())
        })
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.transaction(Durability::Immediate, |_| Ok(()))
    }

    fn scan(&self, table: Table, f: &mut Visit<'_>) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let t = tx
            .open_table(definition(table))
            .map_err(|e| self.error(e))?;
        for entry in t.iter().map_err(|e| self.error(e))? {
            let (k, v) = entry.map_err(|e| self.error(e))?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab\0"), Some(b"ab\x01".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
