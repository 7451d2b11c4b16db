//! `DiskStore`: the disk tier's blocks, one file per block in a directory under a byte budget.
//! A file is a transport frame (model fingerprint, layout, the block's hash, XXH3 checksum of the
//! body), written to a temporary name, synced and renamed, so a crash leaves either the whole
//! block or none of it. On start the index is rebuilt from the files' headers, least recently
//! written first; a file whose header is bad or whose length disagrees with it is deleted. A
//! body is checked against its checksum each time it is read: a corrupt block is deleted and
//! never served.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use runtime::kv::BlockLayout;
use transport::frame::{self, FrameHeader};

use policy::cache::{Evicted, TierStore};

const SUFFIX: &str = ".kv";

/// What `open` found in the directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Blocks indexed.
    pub blocks: usize,
    /// Files deleted: bad headers, wrong lengths, leftovers of interrupted writes, or over the
    /// budget.
    pub dropped: usize,
}

/// Why a stored block could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("block {0:016x} is not on disk")]
    Missing(u64),
    #[error("block {hash:016x} is corrupt ({why}); deleted")]
    Corrupt { hash: u64, why: String },
}

#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    store: TierStore,
}

impl DiskStore {
    /// Open (creating) `dir` with `budget` bytes and index the blocks already there.
    pub fn open(dir: &Path, budget: u64) -> io::Result<(Self, Rebuilt)> {
        fs::create_dir_all(dir)?;
        let mut found: Vec<(std::time::SystemTime, u64, u64)> = Vec::new();
        let mut rebuilt = Rebuilt::default();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let hash = name.strip_suffix(SUFFIX).and_then(|h| u64::from_str_radix(h, 16).ok());
            let indexed = hash.and_then(|hash| {
                let len = entry.metadata().ok()?.len();
                let mtime = entry.metadata().ok()?.modified().ok()?;
                let mut file = fs::File::open(&path).ok()?;
                let (header, head, body) = frame::read_head(&mut file).ok()?;
                (header.hashes == [hash] && head as u64 + body == len).then_some((mtime, hash, len))
            });
            match indexed {
                Some(f) => found.push(f),
                None if entry.file_type().is_ok_and(|t| t.is_file()) => {
                    tracing::warn!(file = %path.display(), "disk tier: dropping a file that is not a whole block");
                    let _ = fs::remove_file(&path);
                    rebuilt.dropped += 1;
                }
                None => {}
            }
        }
        found.sort_unstable();
        let mut store = TierStore::new(budget);
        for (_, hash, len) in found {
            match store.insert(hash, None, len, 0) {
                Ok(evicted) => {
                    for e in evicted {
                        let _ = fs::remove_file(dir.join(file_name(e.hash)));
                        rebuilt.dropped += 1;
                        rebuilt.blocks -= 1;
                    }
                    rebuilt.blocks += 1;
                }
                Err(_) => {
                    let _ = fs::remove_file(dir.join(file_name(hash)));
                    rebuilt.dropped += 1;
                }
            }
        }
        Ok((Self { dir: dir.to_path_buf(), store }, rebuilt))
    }

    pub fn store(&self) -> &TierStore {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut TierStore {
        &mut self.store
    }

    pub fn path_of(&self, hash: u64) -> PathBuf {
        self.dir.join(file_name(hash))
    }

    /// Write one block, evicting (deleting) what it takes to stay within the budget. Returns the
    /// evicted blocks.
    pub fn put(
        &mut self,
        hash: u64,
        parent: Option<u64>,
        model: u64,
        layout: BlockLayout,
        data: &[u8],
        priority: u8,
    ) -> io::Result<Vec<Evicted>> {
        if self.store.contains(hash) {
            self.store.insert(hash, parent, 0, priority).map_err(io::Error::other)?;
            return Ok(Vec::new());
        }
        let header = FrameHeader::for_body(0, model, layout, 0, vec![hash], true, data);
        let head = frame::encode_head(&header, data.len());
        let len = (head.len() + data.len()) as u64;
        // Make room first, so the directory never holds more than the budget.
        let evicted = self.store.insert(hash, parent, len, priority).map_err(io::Error::other)?;
        for e in &evicted {
            let _ = fs::remove_file(self.path_of(e.hash));
        }
        let tmp = self.dir.join(format!(".{hash:016x}.{:08x}.tmp", rand::random::<u32>()));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&head)?;
            f.write_all(data)?;
            f.sync_data()?;
            fs::rename(&tmp, self.path_of(hash))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            self.store.remove(hash);
            return Err(e);
        }
        Ok(evicted)
    }

    /// Read and check one block: its body, which must be for `model` and `layout`. A block that
    /// fails any check is deleted and forgotten.
    pub fn get(&mut self, hash: u64, model: u64, layout: BlockLayout) -> Result<Vec<u8>, ReadError> {
        if !self.store.contains(hash) {
            return Err(ReadError::Missing(hash));
        }
        let path = self.path_of(hash);
        let checked = fs::read(&path).map_err(|e| e.to_string()).and_then(|bytes| {
            let (h, body) = frame::parse_in_place(&bytes).map_err(|e| e.to_string())?;
            if h.hashes != [hash] {
                return Err(format!("the file holds block {:?}", h.hashes));
            }
            if h.model != model || BlockLayout::from(h.layout) != layout {
                return Err("a block of another model or layout".into());
            }
            Ok(bytes[body].to_vec())
        });
        match checked {
            Ok(body) => {
                self.store.serve(hash);
                Ok(body)
            }
            Err(why) => {
                let _ = fs::remove_file(&path);
                self.store.remove(hash);
                Err(ReadError::Corrupt { hash, why })
            }
        }
    }
}

fn file_name(hash: u64) -> String {
    format!("{hash:016x}{SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: BlockLayout = BlockLayout { layers: 2, block_size: 4, kv_width: 8, dtype_bytes: 2 };
    const MODEL: u64 = 0xabc;

    fn block(seed: u8) -> Vec<u8> {
        (0..LAYOUT.block_bytes()).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("armature-disk-{name}-{:08x}", rand::random::<u32>()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn blocks_survive_a_reopen_and_the_budget_holds() {
        let dir = temp_dir("reopen");
        let (mut d, r) = DiskStore::open(&dir, 10_000).unwrap();
        assert_eq!(r, Rebuilt::default());
        for h in 1..=3u64 {
            assert!(d.put(h, None, MODEL, LAYOUT, &block(h as u8), 0).unwrap().is_empty());
        }
        let one = fs::metadata(d.path_of(1)).unwrap().len();
        // A leftover of an interrupted write and a stray file.
        fs::write(dir.join(".0000000000000009.1234.tmp"), b"half").unwrap();
        fs::write(dir.join("0000000000000009.kv"), b"ARKV").unwrap();
        drop(d);
        let (mut d, r) = DiskStore::open(&dir, 10_000).unwrap();
        assert_eq!(r, Rebuilt { blocks: 3, dropped: 2 });
        assert_eq!(d.get(2, MODEL, LAYOUT).unwrap(), block(2));
        assert_eq!(d.store().used(), 3 * one);
        // Reopened with room for two: the oldest goes.
        drop(d);
        let (d, r) = DiskStore::open(&dir, 2 * one + 1).unwrap();
        assert_eq!(r, Rebuilt { blocks: 2, dropped: 1 });
        assert!(!d.path_of(1).exists() && d.path_of(3).exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_or_truncated_block_is_deleted_and_never_served() {
        let dir = temp_dir("corrupt");
        let (mut d, _) = DiskStore::open(&dir, 100_000).unwrap();
        for h in 1..=3u64 {
            d.put(h, None, MODEL, LAYOUT, &block(h as u8), 0).unwrap();
        }
        // Flip one body byte of block 1; cut block 2 short.
        let mut bytes = fs::read(d.path_of(1)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(d.path_of(1), bytes).unwrap();
        let bytes = fs::read(d.path_of(2)).unwrap();
        fs::write(d.path_of(2), &bytes[..bytes.len() - 10]).unwrap();
        assert!(matches!(d.get(1, MODEL, LAYOUT), Err(ReadError::Corrupt { hash: 1, .. })));
        assert!(matches!(d.get(2, MODEL, LAYOUT), Err(ReadError::Corrupt { hash: 2, .. })));
        assert!(matches!(d.get(1, MODEL, LAYOUT), Err(ReadError::Missing(1))));
        assert!(!d.path_of(1).exists() && !d.path_of(2).exists());
        // Another model's reader is refused too.
        assert!(matches!(d.get(3, MODEL + 1, LAYOUT), Err(ReadError::Corrupt { .. })));
        assert_eq!(d.store().len(), 0);
        let events = d.store_mut().take_events();
        assert_eq!(events.len(), 6, "three stored, three removed: {events:?}");
        let _ = fs::remove_dir_all(&dir);
    }
}
