//! The archive: one object store (S3, GCS, Azure, or a local directory)
//! under a prefix, through the `object_store` crate. Layout per journal:
//!
//! ```text
//! <prefix>/<journal id>/segments/<first seq, 20 digits>.seg
//! <prefix>/<journal id>/anchors/<byte offset, 20 digits>.part
//! ```
//!
//! Every object is written once (`If-None-Match: *`), never overwritten;
//! the anchors file goes up in parts, each starting where the previous
//! one ended. With `object-lock-days`, S3 objects are written under
//! Object Lock in compliance mode.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};

use crate::journal::format::{hex, parse_segment_name, segment_name, Hash};

/// Checks that `url` names a store this build can write to.
pub fn check_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!("{url:?} is not a URL (s3://bucket/prefix/, gs://, az://, file:///dir/)")
    })?;
    match scheme {
        "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => {
            if rest.split('/').next().unwrap_or("").is_empty() {
                return Err(format!("{url:?} names no bucket or container"));
            }
            Ok(())
        }
        "file" if rest.starts_with('/') => Ok(()),
        "file" => Err(format!(
            "{url:?}: a file URL needs an absolute path (file:///dir/)"
        )),
        _ => Err(format!(
            "{url:?}: scheme {scheme:?} is not one of s3, gs, az, file"
        )),
    }
}

/// An error talking to the archive, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("archive {url}: {message}")]
pub struct ArchiveError {
    pub url: String,
    pub message: String,
}

/// What became of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The object's URL (with `?versionId=` when the store versions).
    pub location: String,
    /// It was there already, with the same content (an earlier run
    /// uploaded it and stopped before recording it).
    pub existed: bool,
}

/// An opened archive.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    /// `scheme://bucket` (or `file://dir`) and the prefix inside it.
    base: String,
    prefix: ObjPath,
    url: String,
    kind: Kind,
    lock_days: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    S3,
    Gcs,
    Azure,
    Local,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Archive({})", self.url)
    }
}

impl Archive {
    /// Opens `url`; credentials and endpoints come from the environment.
    pub fn open(url: &str, lock_days: Option<u32>) -> Result<Archive, ArchiveError> {
        let err = |m: String| ArchiveError {
            url: url.to_owned(),
            message: m,
        };
        check_url(url).map_err(err)?;
        let (scheme, rest) = url.split_once("://").expect("checked");
        let (kind, bucket, prefix) = match scheme {
            "file" => (
                Kind::Local,
                rest.trim_end_matches('/').to_owned(),
                String::new(),
            ),
            _ => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let kind = match scheme {
                    "s3" | "s3a" => Kind::S3,
                    "gs" => Kind::Gcs,
                    _ => Kind::Azure,
                };
                (kind, bucket.to_owned(), prefix.trim_matches('/').to_owned())
            }
        };
        if lock_days.is_some() && kind != Kind::S3 {
            return Err(err(
                "object-lock-days applies to S3; on GCS and Azure set a retention policy on the bucket or container".into(),
            ));
        }
        let store = build(kind, scheme, &bucket, None).map_err(err)?;
        Ok(Archive {
            store,
            base: format!("{scheme}://{bucket}"),
            prefix: ObjPath::from(prefix),
            url: url.to_owned(),
            kind,
            lock_days,
        })
    }

    fn object(&self, parts: &[&str]) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in parts {
            p = p.join(*part);
        }
        p
    }

    fn url_of(&self, p: &ObjPath) -> String {
        format!("{}/{}", self.base, p)
    }

    fn fail(&self, p: &ObjPath, e: impl std::fmt::Display) -> ArchiveError {
        ArchiveError {
            url: self.url_of(p),
            message: e.to_string(),
        }
    }

    pub fn segment_path(&self, journal_id: &[u8; 16], first_seq: u64) -> ObjPath {
        self.object(&[&hex(journal_id), "segments", &segment_name(first_seq)])
    }

    pub fn anchors_part_path(&self, journal_id: &[u8; 16], offset: u64) -> ObjPath {
        self.object(&[&hex(journal_id), "anchors", &format!("{offset:020}.part")])
    }

    /// Writes `bytes` at `p` once, with its SHA-256 for the store to check
    /// (S3), under Object Lock when configured; then reads it back and
    /// checks the hash. An object already there with the same content is
    /// fine (an earlier run's upload); another content is an error.
    pub async fn put_once(
        &self,
        p: &ObjPath,
        bytes: Bytes,
        sha: &Hash,
    ) -> Result<Stored, ArchiveError> {
        let store = match (self.kind, self.lock_days) {
            (Kind::S3, Some(days)) => {
                let (scheme, bucket) = self.base.split_once("://").expect("a URL");
                build(Kind::S3, scheme, bucket, Some(days)).map_err(|m| self.fail(p, m))?
            }
            _ => self.store.clone(),
        };
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let (version, existed) = match store.put_opts(p, PutPayload::from_bytes(bytes), opts).await
        {
            Ok(r) => (r.version, false),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => (None, true),
            Err(e) => return Err(self.fail(p, e)),
        };
        let got = self.hash_of(p).await?;
        if got != *sha {
            return Err(self.fail(
                p,
                format!(
                    "{}: the object's SHA-256 is {}, the local file's {}",
                    if existed {
                        "an object that was already there differs"
                    } else {
                        "read back wrong"
                    },
                    hex(&got),
                    hex(sha)
                ),
            ));
        }
        let mut location = self.url_of(p);
        if let Some(v) = version {
            location.push_str("?versionId=");
            location.push_str(&v);
        }
        Ok(Stored { location, existed })
    }

    /// SHA-256 of the object, streamed (bounded memory).
    pub async fn hash_of(&self, p: &ObjPath) -> Result<Hash, ArchiveError> {
        let got = self.store.get(p).await.map_err(|e| self.fail(p, e))?;
        let mut stream = got.into_stream();
        let mut h = Sha256::new();
        while let Some(chunk) = stream.next().await {
            h.update(chunk.map_err(|e| self.fail(p, e))?);
        }
        Ok(h.finalize().into())
    }

    /// The whole object and its current version (where the store has
    /// versions).
    pub async fn get_versioned(
        &self,
        p: &ObjPath,
    ) -> Result<(Bytes, Option<String>), ArchiveError> {
        let got = self.store.get(p).await.map_err(|e| self.fail(p, e))?;
        let version = got.meta.version.clone();
        let bytes = got.bytes().await.map_err(|e| self.fail(p, e))?;
        Ok((bytes, version))
    }

    /// The first `n` bytes of an object (a segment's header).
    pub async fn get_prefix(&self, p: &ObjPath, n: u64) -> Result<Bytes, ArchiveError> {
        self.store
            .get_range(p, 0..n)
            .await
            .map_err(|e| self.fail(p, e))
    }

    /// The whole object.
    pub async fn get(&self, p: &ObjPath) -> Result<Bytes, ArchiveError> {
        let got = self.store.get(p).await.map_err(|e| self.fail(p, e))?;
        got.bytes().await.map_err(|e| self.fail(p, e))
    }

    /// Journal ids under the prefix.
    pub async fn journals(&self) -> Result<Vec<[u8; 16]>, ArchiveError> {
        let l = self
            .store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(|e| self.fail(&self.prefix, e))?;
        let mut out: Vec<[u8; 16]> = l
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter_map(crate::journal::format::unhex)
            .filter_map(|b| b.try_into().ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// A journal's archived segments: (first seq, path, size), in order.
    pub async fn segments(
        &self,
        journal_id: &[u8; 16],
    ) -> Result<Vec<(u64, ObjPath, u64)>, ArchiveError> {
        self.numbered(journal_id, "segments", parse_segment_name)
            .await
    }

    /// A journal's anchors parts: (offset, path, size), in order.
    pub async fn anchor_parts(
        &self,
        journal_id: &[u8; 16],
    ) -> Result<Vec<(u64, ObjPath, u64)>, ArchiveError> {
        self.numbered(journal_id, "anchors", |n| {
            n.strip_suffix(".part")
                .filter(|d| d.len() == 20)
                .and_then(|d| d.parse().ok())
        })
        .await
    }

    /// The objects of one folder of a journal whose names `number` reads,
    /// with that number and size, in number order.
    async fn numbered(
        &self,
        journal_id: &[u8; 16],
        folder: &str,
        number: impl Fn(&str) -> Option<u64>,
    ) -> Result<Vec<(u64, ObjPath, u64)>, ArchiveError> {
        let dir = self.object(&[&hex(journal_id), folder]);
        let mut out = Vec::new();
        let mut s = self.store.list(Some(&dir));
        while let Some(m) = s.next().await {
            let m = m.map_err(|e| self.fail(&dir, e))?;
            if let Some(n) = m.location.filename().and_then(&number) {
                out.push((n, m.location.clone(), m.size));
            }
        }
        out.sort_by_key(|x| x.0);
        Ok(out)
    }

    /// The archived anchors file of a journal, its parts joined; an error
    /// names a part that does not start where the one before ended.
    pub async fn anchors_text(
        &self,
        journal_id: &[u8; 16],
    ) -> Result<(String, Option<String>), ArchiveError> {
        let mut text = Vec::new();
        let mut problem = None;
        for (off, p, _) in self.anchor_parts(journal_id).await? {
            if off != text.len() as u64 && problem.is_none() {
                problem = Some(format!(
                    "anchors part {} starts at byte {off}, but the parts before it end at byte {}: a part is missing or was changed",
                    self.url_of(&p),
                    text.len()
                ));
            }
            text.extend_from_slice(&self.get(&p).await?);
        }
        Ok((String::from_utf8_lossy(&text).into_owned(), problem))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL an object path is shown as.
    pub fn location(&self, p: &ObjPath) -> String {
        self.url_of(p)
    }
}

/// A store client. For S3 with `lock_days`, every PUT carries the Object
/// Lock headers (retain-until now + days, compliance mode) and a SHA-256
/// checksum, signed with the request.
fn build(
    kind: Kind,
    scheme: &str,
    bucket: &str,
    lock_days: Option<u32>,
) -> Result<Arc<dyn ObjectStore>, String> {
    use object_store::ClientOptions;
    // The HTTP client takes the process's rustls provider: ring, as for
    // the listeners.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env_true = |k: &str| {
        std::env::var(k)
            .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
            .unwrap_or(false)
    };
    Ok(match kind {
        Kind::Local => {
            std::fs::create_dir_all(bucket).map_err(|e| format!("{bucket}: {e}"))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(bucket)
                    .map_err(|e| e.to_string())?,
            )
        }
        Kind::S3 => {
            let mut opts = ClientOptions::new().with_allow_http(env_true("AWS_ALLOW_HTTP"));
            if let Some(days) = lock_days {
                let until = crate::time::now_ns() / 1_000_000_000 + i64::from(days) * 86_400;
                let date = crate::time::format_rfc3339(until * 1_000_000_000);
                let date = date
                    .split('.')
                    .next()
                    .unwrap_or(&date)
                    .trim_end_matches('Z')
                    .to_owned()
                    + "Z";
                let mut h = http::HeaderMap::new();
                let v = |s: &str| http::HeaderValue::from_str(s).map_err(|e| e.to_string());
                h.insert("x-amz-object-lock-mode", v("COMPLIANCE")?);
                h.insert("x-amz-object-lock-retain-until-date", v(&date)?);
                h.insert("x-amz-sdk-checksum-algorithm", v("SHA256")?);
                opts = opts.with_default_headers(h);
            }
            Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(format!("{scheme}://{bucket}"))
                    .with_client_options(opts)
                    .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
        }
        Kind::Gcs => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(format!("{scheme}://{bucket}"))
                .build()
                .map_err(|e| e.to_string())?,
        ),
        Kind::Azure => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(format!("{scheme}://{bucket}"))
                .build()
                .map_err(|e| e.to_string())?,
        ),
    })
}
