//! API keys with two roles: `read` (Search, GetDocuments, IndexInfo,
//! reflection, metrics) and `admin` (also AddDocuments, DeleteDocuments,
//! Compact). Health checking stays open, so a load balancer needs no key.
//!
//! Keys come from a file or an environment variable, never from the
//! command line (where `ps` shows them): one key per line as `ROLE KEY`
//! (`#` starts a comment; in a variable, entries may also be separated by
//! commas). A client sends `authorization: Bearer KEY`; a key is compared
//! with every configured key in time that does not depend on where they
//! differ. A missing or unknown key is `UNAUTHENTICATED`, a key whose role
//! does not allow the call `PERMISSION_DENIED`; neither says which keys
//! exist.

use std::path::Path;

use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::error::{bail, Context, Result};

/// The shortest key accepted (characters).
pub const MIN_KEY_LEN: usize = 16;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Search, read documents and index information.
    Read,
    /// Also add, delete and compact.
    Admin,
}

/// The configured keys.
#[derive(Clone)]
pub struct AccessKeys {
    keys: Vec<(Role, Vec<u8>)>,
}

impl std::fmt::Debug for AccessKeys {
    // Never print the keys themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |r: Role| self.keys.iter().filter(|(k, _)| *k == r).count();
        f.debug_struct("AccessKeys")
            .field("read", &count(Role::Read))
            .field("admin", &count(Role::Admin))
            .finish()
    }
}

impl AccessKeys {
    /// Parses `ROLE KEY` entries (lines, or comma-separated), naming
    /// `source` and the entry in errors (never the key).
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (i, entry) in text.split(['\n', ',']).enumerate() {
            let entry = entry.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let n = i + 1;
            let mut parts = entry.split_whitespace();
            let (Some(role), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                bail!("{source}: entry {n}: expected `read KEY` or `admin KEY`");
            };
            let role = match role {
                "read" => Role::Read,
                "admin" => Role::Admin,
                other => bail!("{source}: entry {n}: unknown role {other:?} (read or admin)"),
            };
            if key.chars().count() < MIN_KEY_LEN {
                bail!("{source}: entry {n}: a key needs at least {MIN_KEY_LEN} characters");
            }
            keys.push((role, key.as_bytes().to_vec()));
        }
        if keys.is_empty() {
            bail!("{source}: no keys (one `read KEY` or `admin KEY` per line)");
        }
        Ok(Self { keys })
    }

    /// Reads the keys file at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The role of `presented`, comparing it with every key.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut found = None;
        for (role, key) in &self.keys {
            if ct_eq(key, presented) {
                found = found.max(Some(*role));
            }
        }
        found
    }

    /// Whether the request's `authorization: Bearer KEY` allows `need`.
    pub fn check(&self, meta: &MetadataMap, need: Role) -> Result<(), Status> {
        let presented = meta
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented.and_then(|k| self.role_of(k.as_bytes())) {
            None => Err(Status::unauthenticated("a valid API key is required")),
            Some(role) if role >= need => Ok(()),
            Some(_) => Err(Status::permission_denied(
                "this API key's role does not allow this call",
            )),
        }
    }
}

/// The role a `tessera.v1.Tessera` method needs.
pub fn role_for(method: &str) -> Role {
    match method {
        "AddDocuments" | "DeleteDocuments" | "Compact" => Role::Admin,
        _ => Role::Read,
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes
/// differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: &str = "r-0123456789abcdef";
    const ADMIN: &str = "a-0123456789abcdef";

    fn keys() -> AccessKeys {
        AccessKeys::parse(
            &format!("# keys\nread {READ}\n\nadmin {ADMIN}  # the operator\n"),
            "keys.txt",
        )
        .unwrap()
    }

    fn meta(value: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = value {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn roles_allow_what_they_should_and_nothing_else() {
        let k = keys();
        let bearer = |key: &str| meta(Some(&format!("Bearer {key}")));
        assert!(k.check(&bearer(READ), Role::Read).is_ok());
        assert!(k.check(&bearer(ADMIN), Role::Admin).is_ok());
        assert!(k.check(&bearer(ADMIN), Role::Read).is_ok());
        let denied = k.check(&bearer(READ), Role::Admin).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        for m in [
            meta(None),
            bearer("r-0123456789abcdeX"),
            bearer("r-0123456789abcde"),
            meta(Some(READ)),
        ] {
            let e = k.check(&m, Role::Read).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(!e.message().contains(READ) && !e.message().contains(ADMIN));
        }
        assert_eq!(role_for("Compact"), Role::Admin);
        assert_eq!(role_for("Search"), Role::Read);
        assert!(!format!("{k:?}").contains(READ));
    }

    #[test]
    fn bad_key_files_are_refused_naming_the_entry_not_the_key() {
        let e = AccessKeys::parse("read short", "keys.txt")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keys.txt: entry 1") && !e.contains("short"),
            "{e}"
        );
        let e = AccessKeys::parse(&format!("owner {READ}"), "K")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown role \"owner\""), "{e}");
        assert!(AccessKeys::parse("# nothing\n", "K").is_err());
        let k = AccessKeys::parse(&format!("read {READ},admin {ADMIN}"), "env").unwrap();
        assert_eq!(k.role_of(ADMIN.as_bytes()), Some(Role::Admin));
    }
}
