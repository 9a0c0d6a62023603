//! Forward-secure seals for checkpoints. `auditlb keygen` makes `k_0`; the
//! writer seals each checkpoint with the current epoch key `k_e` and then
//! ratchets `k_{e+1} = HMAC(k_e, "ratchet")`, overwriting the key file in
//! place and syncing it, so a later intruder cannot re-seal the past. The
//! verifier holds `k_0` (`verify.key`) and derives every epoch key.
//!
//! One checkpoint, one epoch: epochs in a journal are consecutive.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::format::{hex, unhex, Hash};

const SEAL_MAGIC: &[u8; 16] = b"AUDITLB-SEALKEY1";
const VERIFY_MAGIC: &[u8; 16] = b"AUDITLB-VERIFYK1";
const SEAL_FILE_LEN: usize = 16 + 8 + 32;
const DOMAIN_SEAL: &[u8] = b"auditlb/seal/v1\0";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &Hash, parts: &[&[u8]]) -> Hash {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// `k_{e+1}` from `k_e`.
pub fn ratchet(k: &Hash) -> Hash {
    hmac(k, &[b"ratchet"])
}

/// The key of `epoch`, from `k_0`.
pub fn key_at(k0: &Hash, epoch: u64) -> Hash {
    let mut k = *k0;
    for _ in 0..epoch {
        k = ratchet(&k);
    }
    k
}

/// What a checkpoint seal covers.
pub struct SealInput<'a> {
    pub journal_id: &'a [u8; 16],
    pub seq: u64,
    pub time_ns: i64,
    pub epoch: u64,
    pub covered_seq: u64,
    pub covered_chain: &'a Hash,
}

pub fn seal(key: &Hash, s: &SealInput<'_>) -> Hash {
    hmac(
        key,
        &[
            DOMAIN_SEAL,
            s.journal_id,
            &s.seq.to_be_bytes(),
            &s.time_ns.to_be_bytes(),
            &s.epoch.to_be_bytes(),
            &s.covered_seq.to_be_bytes(),
            s.covered_chain,
        ],
    )
}

/// 32 random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not an auditlb {what} file")]
    Format { path: PathBuf, what: &'static str },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The evolving seal key on the host.
pub struct SealKey {
    path: PathBuf,
    file: File,
    epoch: u64,
    key: Hash,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("path", &self.path)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl SealKey {
    pub fn open(path: &Path) -> Result<SealKey, KeyError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io_err(path))?;
        let mut b = Vec::new();
        if file.metadata().map_err(io_err(path))?.is_file() {
            (&mut file)
                .take(SEAL_FILE_LEN as u64 + 1)
                .read_to_end(&mut b)
                .map_err(io_err(path))?;
        }
        if b.len() != SEAL_FILE_LEN || &b[..16] != SEAL_MAGIC {
            return Err(KeyError::Format {
                path: path.to_owned(),
                what: "seal key",
            });
        }
        Ok(SealKey {
            path: path.to_owned(),
            file,
            epoch: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            key: b[24..56].try_into().expect("32 bytes"),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn key(&self) -> &Hash {
        &self.key
    }

    /// Ratchets to the next epoch and overwrites the old key on disk.
    pub fn advance(&mut self) -> Result<(), KeyError> {
        let image = self.ratchet();
        self.key_file()?.store(&image)
    }

    /// Ratchets to the next epoch in memory only; the old key must then be
    /// overwritten on disk with the returned image ([`KeyFile::store`]).
    pub fn ratchet(&mut self) -> KeyImage {
        self.key = ratchet(&self.key);
        self.epoch += 1;
        self.image()
    }

    /// Ratchets forward until the epoch is at least `epoch`.
    pub fn advance_to(&mut self, epoch: u64) -> Result<(), KeyError> {
        if self.epoch >= epoch {
            return Ok(());
        }
        while self.epoch < epoch {
            self.key = ratchet(&self.key);
            self.epoch += 1;
        }
        let image = self.image();
        self.key_file()?.store(&image)
    }

    /// A second handle on the key file, for writing ratchets elsewhere.
    pub fn key_file(&self) -> Result<KeyFile, KeyError> {
        Ok(KeyFile {
            path: self.path.clone(),
            file: self.file.try_clone().map_err(io_err(&self.path))?,
        })
    }

    fn image(&self) -> KeyImage {
        let mut b = [0u8; SEAL_FILE_LEN];
        b[..16].copy_from_slice(SEAL_MAGIC);
        b[16..24].copy_from_slice(&self.epoch.to_be_bytes());
        b[24..56].copy_from_slice(&self.key);
        KeyImage(b)
    }
}

/// The seal-key file's contents at one epoch.
pub struct KeyImage([u8; SEAL_FILE_LEN]);

/// Where ratcheted keys are stored.
pub struct KeyFile {
    path: PathBuf,
    file: File,
}

impl KeyFile {
    /// Overwrites the key file in place and syncs it, so the old key is gone.
    pub fn store(&self, image: &KeyImage) -> Result<(), KeyError> {
        self.file
            .write_all_at(&image.0, 0)
            .map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// Reads `verify.key` (or a file holding the key as 64 hex digits).
pub fn read_verify_key(path: &Path) -> Result<Hash, KeyError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err(path))?;
    let mut b = Vec::new();
    if f.metadata().map_err(io_err(path))?.is_file() {
        f.take(4096).read_to_end(&mut b).map_err(io_err(path))?;
    }
    if b.len() == 48 && &b[..16] == VERIFY_MAGIC {
        return Ok(b[16..48].try_into().expect("32 bytes"));
    }
    let text = String::from_utf8_lossy(&b);
    unhex(text.trim())
        .and_then(|v| <Hash>::try_from(v).ok())
        .ok_or(KeyError::Format {
            path: path.to_owned(),
            what: "verify key",
        })
}

/// `auditlb keygen`: writes `dir/seal.key` (epoch 0) and `dir/verify.key`
/// (`k_0`), both mode 0600, refusing to overwrite. Returns `k_0` in hex.
pub fn keygen(dir: &Path) -> Result<String, KeyError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let k0: Hash = random_bytes().map_err(io_err(Path::new("/dev/urandom")))?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), KeyError> {
        let path = dir.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(bytes).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))
    };
    let mut seal = Vec::with_capacity(SEAL_FILE_LEN);
    seal.extend_from_slice(SEAL_MAGIC);
    seal.extend_from_slice(&0u64.to_be_bytes());
    seal.extend_from_slice(&k0);
    write("seal.key", &seal)?;
    let mut verify = Vec::with_capacity(48);
    verify.extend_from_slice(VERIFY_MAGIC);
    verify.extend_from_slice(&k0);
    write("verify.key", &verify)?;
    Ok(hex(&k0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratchet_is_one_way_and_keys_derive_from_k0() {
        let k0 = [3u8; 32];
        let k2 = ratchet(&ratchet(&k0));
        assert_eq!(key_at(&k0, 2), k2);
        assert_ne!(k2, k0);
    }

    #[test]
    fn keygen_then_evolve_overwrites_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let k0hex = keygen(dir.path()).unwrap();
        let k0 = read_verify_key(&dir.path().join("verify.key")).unwrap();
        assert_eq!(hex(&k0), k0hex);
        let mut sk = SealKey::open(&dir.path().join("seal.key")).unwrap();
        assert_eq!((sk.epoch(), *sk.key()), (0, k0));
        sk.advance().unwrap();
        sk.advance_to(5).unwrap();
        let again = SealKey::open(&dir.path().join("seal.key")).unwrap();
        assert_eq!(again.epoch(), 5);
        assert_eq!(*again.key(), key_at(&k0, 5));
        let on_disk = std::fs::read(dir.path().join("seal.key")).unwrap();
        assert!(
            !on_disk.windows(32).any(|w| w == k0),
            "k_0 erased from seal.key"
        );
        assert!(keygen(dir.path()).is_err(), "refuses to overwrite");
    }
}
