//! Operator signatures (Ed25519): what `sentinel fleet decide|block|unblock` write is signed
//! with an operator's private key, and an agent acts on it only if one of the public keys in
//! `fleet.operator_keys` verifies it. The store, and every host that can write to it, is
//! then unable to forge an answer or a shared block/lift: they hold no private key.
//!
//! The signed message is unambiguous: a fixed domain tag, then every field as a 4-byte
//! big-endian length and its bytes, the first field naming what is signed (`answer`, `block`,
//! `lift`), so no two different orders encode to the same bytes. Keys and signatures travel
//! as hex; malformed text of any kind is an error, never a panic.

use std::{
    fmt,
    io::{Read as _, Write as _},
    net::IpAddr,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

/// Tags every signed message, so no signature made for another purpose verifies here.
const DOMAIN: &[u8] = b"sentinel fleet operator signature v1\0";
/// How far in the future a signing time may be (clocks differ a little).
const SKEW: Duration = Duration::from_secs(60);

/// What an operator signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order<'a> {
    /// An answer to `host`'s decision `decision_id`: `verdict` is `safe` or `block`.
    Answer {
        host: &'a str,
        decision_id: &'a str,
        verdict: &'a str,
    },
    /// Block `addr` on every host that shares blocks.
    Block { addr: IpAddr },
    /// Lift the fleet's block on `addr`.
    Lift { addr: IpAddr },
}

/// The bytes signed for `order`, given by `operator` at `at_ms` (milliseconds since the epoch).
pub fn message(order: &Order, at_ms: i64, operator: &str) -> Vec<u8> {
    let at = at_ms.to_string();
    let addr;
    let fields: Vec<&str> = match order {
        Order::Answer {
            host,
            decision_id,
            verdict,
        } => vec!["answer", host, decision_id, verdict, &at, operator],
        Order::Block { addr: a } | Order::Lift { addr: a } => {
            addr = a.to_string();
            let kind = if matches!(order, Order::Block { .. }) {
                "block"
            } else {
                "lift"
            };
            vec![kind, &addr, &at, operator]
        }
    };
    let mut out = DOMAIN.to_vec();
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

/// Why a signed order is not acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("not signed by an operator")]
    Unsigned,
    #[error("no key of operator {0:?} in fleet.operator_keys")]
    UnknownOperator(String),
    #[error("the signature does not match (forged, or changed after signing)")]
    BadSignature,
    #[error("signed {0} s ago, older than fleet.answer_ttl")]
    Stale(i64),
    #[error("signed {0} s in the future")]
    Future(i64),
    #[error("already applied (replayed)")]
    Replayed,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether an order signed at `at_ms` is still young enough at `now_ms`.
pub fn fresh(at_ms: i64, now_ms: i64, ttl: Duration) -> Result<(), SignError> {
    let age = now_ms.saturating_sub(at_ms);
    if age < -(SKEW.as_millis() as i64) {
        return Err(SignError::Future(age.saturating_neg() / 1000));
    }
    if age > ttl.as_millis() as i64 {
        return Err(SignError::Stale(age / 1000));
    }
    Ok(())
}

/// Whether `name` can name an operator (it is signed, stored and shown).
pub fn check_operator_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("operator name {name:?} is not 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
    {
        return Err(format!(
            "operator name {name:?} may only hold letters, digits, '.', '_', '@' and '-'"
        ));
    }
    Ok(())
}

/// One entry of `fleet.operator_keys`: `NAME:HEX` (the line `sentinel fleet keygen` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorKey {
    pub name: String,
    pub key: VerifyingKey,
}

impl FromStr for OperatorKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((name, hex_key)) = text.trim().split_once(':') else {
            return Err("is not NAME:KEY (the line `sentinel fleet keygen` prints)".into());
        };
        check_operator_name(name)?;
        let bytes: [u8; 32] = hex::decode(hex_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the key is not 64 hex digits (an Ed25519 public key)")?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "the key is not a valid Ed25519 public key".to_string())?;
        Ok(Self {
            name: name.into(),
            key,
        })
    }
}

impl fmt::Display for OperatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, hex::encode(self.key.as_bytes()))
    }
}

/// The public keys an agent trusts. Several keys may share a name (rotation).
#[derive(Debug, Clone, Default)]
pub struct Keyring(pub Vec<OperatorKey>);

impl Keyring {
    /// Parse `fleet.operator_keys`; each problem names its entry.
    pub fn parse(entries: &[String]) -> Result<Self, Vec<(usize, String)>> {
        let (mut keys, mut bad) = (Vec::new(), Vec::new());
        for (i, e) in entries.iter().enumerate() {
            match e.parse() {
                Ok(k) => keys.push(k),
                Err(why) => bad.push((i, why)),
            }
        }
        if bad.is_empty() {
            Ok(Self(keys))
        } else {
            Err(bad)
        }
    }

    /// Check that `signature` (hex) is `operator`'s over `order` at `at_ms`.
    pub fn verify(
        &self,
        order: &Order,
        at_ms: i64,
        operator: &str,
        signature: &str,
    ) -> Result<(), SignError> {
        if signature.is_empty() || operator.is_empty() {
            return Err(SignError::Unsigned);
        }
        let mut keys = self.0.iter().filter(|k| k.name == operator).peekable();
        if keys.peek().is_none() {
            return Err(SignError::UnknownOperator(operator.into()));
        }
        let bytes: [u8; 64] = hex::decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SignError::BadSignature)?;
        let sig = Signature::from_bytes(&bytes);
        let msg = message(order, at_ms, operator);
        keys.any(|k| k.key.verify_strict(&msg, &sig).is_ok())
            .then_some(())
            .ok_or(SignError::BadSignature)
    }
}

/// An operator's private key, as `sentinel fleet keygen` writes it (TOML, mode 0600).
pub struct OperatorSecret {
    pub name: String,
    key: SigningKey,
}

/// Shows the name and public key only.
impl fmt::Debug for OperatorSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorSecret({})", self.public())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    operator: String,
    secret: String,
}

impl OperatorSecret {
    /// A new key from the kernel's random source.
    pub fn generate(name: &str) -> Result<Self, String> {
        check_operator_name(name)?;
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|e| format!("/dev/urandom: {e}"))?;
        Ok(Self {
            name: name.into(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Read a key file; it must be private to its owner.
    pub fn read(path: &Path) -> Result<Self, String> {
        let at = |e: &dyn fmt::Display| format!("{}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| at(&e))?;
        if meta.mode() & 0o077 != 0 {
            return Err(at(&format_args!(
                "mode {:04o}: an operator's private key must be readable by its owner only \
                 (chmod 600)",
                meta.mode() & 0o7777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
        let file: SecretFile = toml::from_str(&text)
            .map_err(|_| at(&"not an operator key file (`sentinel fleet keygen` writes one)"))?;
        check_operator_name(&file.operator).map_err(|e| at(&e))?;
        let seed: [u8; 32] = hex::decode(file.secret.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| at(&"the secret is not 64 hex digits"))?;
        Ok(Self {
            name: file.operator,
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Write the key to `path`, mode 0600; an existing file is never overwritten.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let at = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => format!(
                    "{} exists: refusing to overwrite a key (remove it first if you mean to)",
                    path.display()
                ),
                _ => at(e),
            })?;
        let text = toml::to_string(&SecretFile {
            operator: self.name.clone(),
            secret: hex::encode(self.key.to_bytes()),
        })
        .map_err(|e| e.to_string())?;
        f.write_all(
            format!(
                "# Sentinel fleet operator key (Ed25519). Private: never copy it to a host.\n\
                 # Public key, for fleet.operator_keys: {}\n{text}",
                self.public()
            )
            .as_bytes(),
        )
        .map_err(at)
    }

    /// The public half, as `fleet.operator_keys` lists it.
    pub fn public(&self) -> OperatorKey {
        OperatorKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Sign `order` now: (time in ms, signature in hex).
    pub fn sign(&self, order: &Order) -> (i64, String) {
        let at = now_ms();
        (at, self.sign_at(order, at))
    }

    /// Sign `order` as given at `at_ms`.
    pub fn sign_at(&self, order: &Order, at_ms: i64) -> String {
        hex::encode(self.key.sign(&message(order, at_ms, &self.name)).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer<'a>(host: &'a str, id: &'a str, verdict: &'a str) -> Order<'a> {
        Order::Answer {
            host,
            decision_id: id,
            verdict,
        }
    }

    #[test]
    fn fields_are_length_prefixed_so_boundaries_cannot_move() {
        let a = message(&answer("web1", "a1", "safe"), 5, "alice");
        let b = message(&answer("web1a", "1", "safe"), 5, "alice");
        assert_ne!(a, b);
        let mut expected = DOMAIN.to_vec();
        for f in ["answer", "web1", "a1", "safe", "5", "alice"] {
            expected.extend_from_slice(&(f.len() as u32).to_be_bytes());
            expected.extend_from_slice(f.as_bytes());
        }
        assert_eq!(a, expected);
        let addr = "198.51.100.7".parse().unwrap();
        assert_ne!(
            message(&Order::Block { addr }, 5, "alice"),
            message(&Order::Lift { addr }, 5, "alice")
        );
    }

    #[test]
    fn a_signature_verifies_only_for_what_was_signed() {
        let alice = OperatorSecret::generate("alice").unwrap();
        let mallory = OperatorSecret::generate("alice").unwrap();
        let ring = Keyring(vec![alice.public()]);
        let order = answer("web1", "a1", "safe");
        let (at, sig) = alice.sign(&order);
        assert_eq!(ring.verify(&order, at, "alice", &sig), Ok(()));
        // Tampered: another host, verdict, time or name.
        for (o, t, n) in [
            (answer("web2", "a1", "safe"), at, "alice"),
            (answer("web1", "a1", "block"), at, "alice"),
            (answer("web1", "a1", "safe"), at + 1, "alice"),
        ] {
            assert_eq!(ring.verify(&o, t, n, &sig), Err(SignError::BadSignature));
        }
        assert_eq!(
            ring.verify(&order, at, "bob", &sig),
            Err(SignError::UnknownOperator("bob".into()))
        );
        // Another key under the same name.
        let (at2, forged) = mallory.sign(&order);
        assert_eq!(
            ring.verify(&order, at2, "alice", &forged),
            Err(SignError::BadSignature)
        );
        assert_eq!(ring.verify(&order, at, "", ""), Err(SignError::Unsigned));
        // Rotation: either of two keys under one name verifies.
        let both = Keyring(vec![alice.public(), mallory.public()]);
        assert_eq!(both.verify(&order, at2, "alice", &forged), Ok(()));
    }

    #[test]
    fn malformed_signatures_are_refused_without_panicking() {
        let alice = OperatorSecret::generate("alice").unwrap();
        let ring = Keyring(vec![alice.public()]);
        let order = answer("web1", "a1", "safe");
        for sig in [
            "zz",
            "00",
            &"0".repeat(127),
            &"0".repeat(128),
            &"ff".repeat(64),
            "é",
        ] {
            assert_eq!(
                ring.verify(&order, 1, "alice", sig),
                Err(SignError::BadSignature),
                "{sig}"
            );
        }
    }

    #[test]
    fn operator_keys_parse_with_precise_errors() {
        let k = OperatorSecret::generate("alice@ops").unwrap().public();
        let text = k.to_string();
        assert_eq!(text.parse::<OperatorKey>().unwrap(), k);
        for (bad, why) in [
            ("nocolon", "NAME:KEY"),
            ("a b:00", "may only hold"),
            (":00", "1 to 64"),
            ("alice:xyz", "64 hex digits"),
            ("alice:0011", "64 hex digits"),
        ] {
            let e = bad.parse::<OperatorKey>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let ring = Keyring::parse(&[text, "x".into()]).unwrap_err();
        assert_eq!(ring.len(), 1);
        assert_eq!(ring[0].0, 1);
    }

    #[test]
    fn freshness_has_a_ttl_and_little_tolerance_for_the_future() {
        let ttl = Duration::from_secs(600);
        assert!(fresh(1_000_000, 1_000_000 + 599_000, ttl).is_ok());
        assert_eq!(
            fresh(1_000_000, 1_000_000 + 601_000, ttl),
            Err(SignError::Stale(601))
        );
        assert!(fresh(1_000_000 + 30_000, 1_000_000, ttl).is_ok());
        assert!(matches!(
            fresh(1_000_000 + 120_000, 1_000_000, ttl),
            Err(SignError::Future(_))
        ));
        assert!(fresh(i64::MIN, i64::MAX, ttl).is_err());
        assert!(fresh(i64::MAX, i64::MIN, ttl).is_err());
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.key");
        let key = OperatorSecret::generate("alice").unwrap();
        key.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = OperatorSecret::generate("alice").unwrap();
        let e = again.write(&path).unwrap_err();
        assert!(e.contains("refusing to overwrite"), "{e}");
        let read = OperatorSecret::read(&path).unwrap();
        assert_eq!(read.public(), key.public());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(OperatorSecret::read(&path).unwrap_err().contains("0644"));
    }

    #[test]
    fn the_config_names_each_bad_key_and_a_bad_ttl() {
        let good = OperatorSecret::generate("alice")
            .unwrap()
            .public()
            .to_string();
        let c = crate::fleet::FleetConfig {
            operator_keys: vec![good, "bob:1234".into(), "nocolon".into()],
            answer_ttl: Duration::from_secs(1),
            ..Default::default()
        };
        let p = c.problems();
        let got: Vec<(&str, &str)> = p
            .iter()
            .map(|p| (p.key.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].0 == "fleet.operator_keys" && got[0].1.starts_with("entry 2 "));
        assert!(got[1].0 == "fleet.operator_keys" && got[1].1.starts_with("entry 3 "));
        assert_eq!(got[2].0, "fleet.answer_ttl");
        assert_eq!(c.keyring().0.len(), 1);
    }
}
