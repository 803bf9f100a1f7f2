//! Signed links: the Teams buttons. A link answers one decision with one verdict until the
//! decision's deadline, and carries its HMAC-SHA256 signature under the override key; a used
//! link is remembered until it expires, so it works once. A link counts as used only once the
//! switch took its answer: a click that met a busy switch can be repeated.

use std::{
    collections::HashMap,
    fmt,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use axum::http::StatusCode;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::HttpRefusal;
use crate::{
    secret_file::{self, Readers},
    switch::{
        answer::{action, parse_action, valid_id},
        decision::Verdict,
    },
};

pub(super) type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted override key, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Used link signatures remembered (each until its expiry) to refuse replays.
const MAX_USED_LINKS: usize = 100_000;

/// Why the override key could not be loaded. Each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("override secret {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("override secret {path}: not a regular file")]
    NotAFile { path: PathBuf },
    /// Not root's, or others than root may read or write it.
    #[error("override secret {0}")]
    Unsafe(#[from] secret_file::Unsafe),
    #[error(
        "override secret {path}: {len} bytes is too short, at least {MIN_SECRET_LEN} are needed \
         (e.g. `openssl rand -hex 32 > {path}`)"
    )]
    TooShort { path: PathBuf, len: usize },
}

/// The key signing override links (HMAC-SHA256). Its bytes never leave this type: `Debug`
/// prints nothing of them.
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Load `override.secret_file`. The key is the file's content with surrounding ASCII
    /// whitespace removed, used as is (so `openssl rand -hex 32` text and raw random bytes
    /// both work); it must be at least [`MIN_SECRET_LEN`] bytes. The file must be a regular
    /// file owned by root that neither group nor others can read or write (mode 0600 or
    /// 0400); it is judged on the open file, so the file judged is the file read.
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let read = |source| SecretError::Read {
            path: path.into(),
            source,
        };
        // Non-blocking: a FIFO put in the key's place is refused below, not waited on.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
            .map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        if !meta.is_file() {
            return Err(SecretError::NotAFile { path: path.into() });
        }
        secret_file::check(path, &meta, "the override key", Readers::Owner)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(read)?;
        let key = bytes.trim_ascii();
        if key.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                path: path.into(),
                len: key.len(),
            });
        }
        Ok(Secret(key.to_vec()))
    }

    /// A key from bytes in memory (tests).
    #[cfg(test)]
    pub fn from_bytes(key: &[u8]) -> Secret {
        Secret(key.to_vec())
    }

    /// The key's length in bytes (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn mac(&self, id: &str, verdict: Verdict, exp: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(format!("sentinel-link-v1|{id}|{}|{exp}", action(verdict)).as_bytes());
        mac
    }

    /// The signature of a link answering decision `id` with `verdict`, valid until `exp`
    /// (unix seconds): hex HMAC-SHA256 over `sentinel-link-v1|id|action|exp`.
    pub fn sign(&self, id: &str, verdict: Verdict, exp: u64) -> String {
        hex::encode(self.mac(id, verdict, exp).finalize().into_bytes())
    }

    /// Whether `sig` (hex) signs this link; compared in constant time.
    pub fn verify(&self, id: &str, verdict: Verdict, exp: u64, sig: &str) -> bool {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        self.mac(id, verdict, exp).verify_slice(&sig).is_ok()
    }
}

pub(super) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds, rounded up: a link expires at the deadline, not a second before it.
pub fn expiry(deadline: SystemTime) -> u64 {
    deadline
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(0)
}

/// The signed link answering decision `id` with `verdict`, valid until `deadline`:
/// `<public_url>/v1/decide?id=…&action=safe|block&exp=<unix>&sig=<hex>`. Opening it shows a
/// confirmation page; its button (a POST) applies the answer, once.
pub fn decide_link(
    public_url: &str,
    secret: &Secret,
    id: &str,
    verdict: Verdict,
    deadline: SystemTime,
) -> String {
    let exp = expiry(deadline);
    let sig = secret.sign(id, verdict, exp);
    format!(
        "{}/v1/decide?id={id}&action={}&exp={exp}&sig={sig}",
        public_url.trim_end_matches('/'),
        action(verdict)
    )
}

/// A signed link's fields (query of the GET, form of the POST).
#[derive(Debug, Deserialize)]
pub(super) struct Link {
    pub id: String,
    pub action: String,
    pub exp: u64,
    pub sig: String,
}

impl Link {
    /// Check the link's form and signature and that it has not expired; the verdict it
    /// carries.
    pub fn check(&self, secret: &Secret, now: u64) -> Result<Verdict, HttpRefusal> {
        let verdict = parse_action(&self.action)
            .ok_or_else(|| HttpRefusal::new(StatusCode::BAD_REQUEST, "unknown action"))?;
        if !valid_id(&self.id) || self.sig.len() != 64 {
            return Err(HttpRefusal::new(StatusCode::BAD_REQUEST, "malformed link"));
        }
        if !secret.verify(&self.id, verdict, self.exp, &self.sig) {
            return Err(HttpRefusal::new(StatusCode::FORBIDDEN, "bad signature"));
        }
        if now >= self.exp {
            return Err(HttpRefusal::new(
                StatusCode::GONE,
                format!("link for decision {} has expired", self.id),
            ));
        }
        Ok(verdict)
    }

    fn key(&self) -> Option<[u8; 32]> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.sig, &mut key).ok()?;
        Some(key)
    }

    fn refusal(&self, entry: Use) -> HttpRefusal {
        let how = if entry.in_flight {
            "is being used"
        } else {
            "was already used"
        };
        HttpRefusal::new(
            StatusCode::CONFLICT,
            format!("link for decision {} {how}", self.id),
        )
    }
}

/// Link signatures already used (or being used), with their expiry (unix seconds).
#[derive(Default)]
pub(super) struct UsedLinks(Mutex<HashMap<[u8; 32], Use>>);

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Use {
    exp: u64,
    /// Its answer is with the switch now; it is spent only once the switch takes it.
    in_flight: bool,
}

/// A link held while its answer is with the switch: [`Claim::spend`] it when the switch took
/// the answer; dropped unspent (the switch was busy, stopping or refused), the link can be used
/// again.
pub(super) struct Claim<'a> {
    used: &'a UsedLinks,
    key: [u8; 32],
    spent: bool,
}

impl Claim<'_> {
    /// The switch took the answer: the link is used for good.
    pub fn spend(mut self) {
        self.spent = true;
        if let Some(entry) = self.used.lock().get_mut(&self.key) {
            entry.in_flight = false;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.spent {
            self.used.lock().remove(&self.key);
        }
    }
}

impl UsedLinks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Use>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuse a link that was already used (the confirmation page of a used link).
    pub fn check_unused(&self, link: &Link) -> Result<(), HttpRefusal> {
        match link.key().and_then(|key| self.lock().get(&key).copied()) {
            Some(entry) => Err(link.refusal(entry)),
            None => Ok(()),
        }
    }

    /// Hold a link while its answer goes to the switch; refused if it is used or held. Expired
    /// entries are dropped first, so memory stays bounded by the links still valid.
    pub fn claim(&self, link: &Link, now: u64) -> Result<Claim<'_>, HttpRefusal> {
        let key = link
            .key()
            .ok_or_else(|| HttpRefusal::new(StatusCode::BAD_REQUEST, "malformed link"))?;
        let mut used = self.lock();
        if let Some(entry) = used.get(&key) {
            return Err(link.refusal(*entry));
        }
        if used.len() >= MAX_USED_LINKS {
            used.retain(|_, entry| entry.in_flight || entry.exp > now);
            if used.len() >= MAX_USED_LINKS {
                return Err(HttpRefusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many links in use",
                ));
            }
        }
        let entry = Use {
            exp: link.exp,
            in_flight: true,
        };
        used.insert(key, entry);
        Ok(Claim {
            used: self,
            key,
            spent: false,
        })
    }
}
