//! The NetBox API token: a value that is never printed ([`Token`]), and where the allocator
//! gets it ([`TokenSource`]).
//!
//! Rule (documented in `docs/netbox.md`): for a group whose `tokenSecretRef.name` is the Secret
//! mounted into the allocator pod (`--netbox-token-secret`, set by the Helm chart), the token is
//! read from the file `<--netbox-token-dir>/<key>`. It is read from the Secret in the install
//! namespace through the API instead (the chart's Role allows `get` on that one Secret only)
//! when that file is missing or empty, when NetBox refused exactly the token the file holds (a
//! rotated Secret the kubelet has not copied yet), and for every other Secret. Tokens read through the API are
//! cached for a short while; [`TokenSource::invalidate`] forgets one after NetBox refused it.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::api::SecretKeyRef;

/// Longest token accepted (NetBox tokens are 40 characters; v2 tokens a little longer).
const MAX_TOKEN_LEN: usize = 4096;

/// A NetBox API token. Its `Debug` prints `<redacted>`; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// Wraps a token (surrounding whitespace, such as the newline of a file, is removed).
    #[must_use]
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value.trim()))
    }

    /// The `Authorization` header value: `Token <t>`, or `Bearer <t>` for NetBox 4.5+ v2
    /// tokens (`nbt_…`). Marked sensitive so that HTTP tooling does not print it.
    ///
    /// # Errors
    ///
    /// The token has characters a header cannot carry.
    pub fn header(&self) -> Result<http::HeaderValue, TokenError> {
        let scheme = if self.0.starts_with("nbt_") { "Bearer" } else { "Token" };
        let mut value =
            http::HeaderValue::from_str(&format!("{scheme} {}", self.0)).map_err(|_| TokenError::NotText)?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn is_usable(&self) -> bool {
        !self.0.is_empty() && self.0.len() <= MAX_TOKEN_LEN && !self.0.chars().any(char::is_control)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why the token could not be read. Messages say what to fix; they never contain the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The Secret does not exist.
    #[error(
        "the NetBox token Secret {namespace}/{name} does not exist: create it (kubectl -n {namespace} create secret generic {name} --from-literal={key}=<token>)"
    )]
    SecretNotFound { namespace: String, name: String, key: String },
    /// The allocator may not read the Secret.
    #[error(
        "the allocator may not read Secret {namespace}/{name}: with the Helm chart set netbox.enabled=true and netbox.tokenSecret.name={name}, or apply manifests/rbac-netbox.yaml naming this Secret"
    )]
    Forbidden { namespace: String, name: String },
    /// The Secret has no such key.
    #[error(
        "Secret {namespace}/{name} has no key {key:?}: set spec.netbox.tokenSecretRef.key to the key holding the token"
    )]
    KeyMissing { namespace: String, name: String, key: String },
    /// The value is empty, too long, or not text.
    #[error(
        "key {key:?} of Secret {namespace}/{name} does not hold a usable NetBox token (empty, not text, or too long)"
    )]
    Unusable { namespace: String, name: String, key: String },
    /// The key cannot name a file.
    #[error("spec.netbox.tokenSecretRef.key {key:?} is not a usable key")]
    BadKey { key: String },
    /// The token cannot go into an HTTP header.
    #[error("the NetBox token has characters an HTTP header cannot carry")]
    NotText,
    /// The API call failed or timed out.
    #[error("cannot read Secret {namespace}/{name}: {detail}")]
    Api { namespace: String, name: String, detail: String },
}

impl TokenError {
    /// Whether trying again later can help without anybody changing anything.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Api { .. })
    }
}

/// A Secret name and key.
type SecretKey = (String, String);

/// Where tokens come from.
#[derive(Clone)]
pub struct TokenSource {
    client: kube::Client,
    namespace: String,
    dir: PathBuf,
    mounted_secret: Option<String>,
    timeout: Duration,
    cache_for: Duration,
    cache: Arc<Mutex<HashMap<SecretKey, (Token, Instant)>>>,
    /// Tokens from files that NetBox refused, per Secret and key.
    refused: Arc<Mutex<HashMap<SecretKey, Token>>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("namespace", &self.namespace)
            .field("dir", &self.dir)
            .field("mounted_secret", &self.mounted_secret)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Reads Secrets of `namespace` through `client`; the Secret named `mounted_secret` is
    /// first looked for as files in `dir`. Every API call is bounded by `timeout`.
    #[must_use]
    pub fn new(
        client: kube::Client,
        namespace: &str,
        dir: PathBuf,
        mounted_secret: Option<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            dir,
            mounted_secret: mounted_secret.filter(|s| !s.is_empty()),
            timeout,
            cache_for: Duration::from_secs(30),
            cache: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// Reuses a token read through the API for `ttl` (default 30 s; zero: read it every time).
    #[must_use]
    pub fn cache_for(mut self, ttl: Duration) -> Self {
        self.cache_for = ttl;
        self
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<SecretKey, (Token, Instant)>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token `reference` points to.
    ///
    /// # Errors
    ///
    /// The Secret or key is missing or unreadable, or the value is not a usable token.
    pub async fn token(&self, reference: &SecretKeyRef) -> Result<Token, TokenError> {
        let key = reference.key.as_str();
        if key.is_empty() || key == "." || key == ".." || key.contains('/') {
            return Err(TokenError::BadKey { key: key.chars().take(64).collect() });
        }
        let cache_key = (reference.name.clone(), key.to_owned());
        if self.mounted_secret.as_deref() == Some(reference.name.as_str())
            && let Ok(text) = tokio::fs::read_to_string(self.dir.join(key)).await
        {
            let token = Token::new(&text);
            let refused = self.refused().get(&cache_key) == Some(&token);
            if token.is_usable() && !refused {
                return Ok(token);
            }
        }
        if let Some((token, at)) = self.cache().get(&cache_key)
            && at.elapsed() < self.cache_for
        {
            return Ok(token.clone());
        }
        let token = self.read_secret(reference).await?;
        self.cache().insert(cache_key, (token.clone(), Instant::now()));
        Ok(token)
    }

    /// NetBox refused the token `reference` gave: forget a cached one, and read the Secret
    /// through the API while the mounted file still holds the refused token.
    pub async fn invalidate(&self, reference: &SecretKeyRef) {
        let cache_key = (reference.name.clone(), reference.key.clone());
        self.cache().remove(&cache_key);
        if self.mounted_secret.as_deref() == Some(reference.name.as_str())
            && let Ok(text) = tokio::fs::read_to_string(self.dir.join(&reference.key)).await
        {
            self.refused().insert(cache_key, Token::new(&text));
        }
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, HashMap<SecretKey, Token>> {
        self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn read_secret(&self, reference: &SecretKeyRef) -> Result<Token, TokenError> {
        let namespace = self.namespace.clone();
        let name = reference.name.clone();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let secret = match tokio::time::timeout(self.timeout, api.get(&name)).await {
            Err(_) => {
                return Err(TokenError::Api {
                    namespace,
                    name,
                    detail: format!("no answer within {:?}", self.timeout),
                });
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                return Err(TokenError::SecretNotFound { namespace, name, key: reference.key.clone() });
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 403 => {
                return Err(TokenError::Forbidden { namespace, name });
            }
            Ok(Err(error)) => return Err(TokenError::Api { namespace, name, detail: error.to_string() }),
            Ok(Ok(secret)) => secret,
        };
        let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(&reference.key)) else {
            return Err(TokenError::KeyMissing { namespace, name, key: reference.key.clone() });
        };
        let unusable =
            || TokenError::Unusable { namespace: namespace.clone(), name: name.clone(), key: reference.key.clone() };
        let text = std::str::from_utf8(&bytes.0).map_err(|_| unusable())?;
        let token = Token::new(text);
        if token.is_usable() { Ok(token) } else { Err(unusable()) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_token_is_never_printed() {
        let token = Token::new("0123456789abcdef0123456789abcdef01234567\n");
        let shown = format!("{token:?} {:?}", Some(&token));
        assert!(!shown.contains("0123456789"), "{shown}");
        assert!(shown.contains("<redacted>"));
        let header = token.header().unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), "Token 0123456789abcdef0123456789abcdef01234567");
        assert!(!format!("{header:?}").contains("0123456789"), "http prints sensitive headers as Sensitive");
        assert!(Token::new("nbt_abc.def").header().unwrap().to_str().unwrap().starts_with("Bearer "));
        assert!(Token::new("a\u{1}b").header().is_err());
    }

    #[test]
    fn usable_tokens() {
        assert!(Token::new(" abc \n").is_usable());
        assert!(!Token::new(" \n").is_usable());
        assert!(!Token::new(&"x".repeat(MAX_TOKEN_LEN + 1)).is_usable());
    }
}
