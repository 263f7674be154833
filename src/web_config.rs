//! The exporter's own HTTP security, from a web config file in the Prometheus exporter-toolkit's
//! format (`--web.config.file`, or `web_config_file:` in the config): HTTPS whose certificate is
//! reloaded when its files change, and basic auth with bcrypt-hashed passwords.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt      # relative paths are relative to this file
//!   key_file: server.key
//!   client_ca_file: ca.crt     # optional: clients must show a certificate this CA signed
//!   client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven
//! basic_auth_users:
//!   prometheus: $2y$10$...     # htpasswd -nBC 10 "" | tr -d ':\n'
//! ```
//!
//! `/-/healthy` answers without credentials (a liveness probe has none). A bcrypt check costs
//! tens of milliseconds on purpose, so a successful one is remembered (keyed by a salted SHA-256
//! of the presented user and password) and later scrapes with the same credentials pay a hash,
//! not a bcrypt. An unknown user still costs one bcrypt check against a dummy hash at the
//! highest cost configured, so the time of a 401 does not tell which user names exist as long
//! as every hash has that cost (a warning at start says when they differ).

use crate::config::{problem_at, yaml_error, ConfigError, Step};
use hyper::header::HeaderValue;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// The file's shape; unknown keys (toolkit options not supported here) are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<ServerTlsFile>,
    #[serde(default, deserialize_with = "users_once_each")]
    basic_auth_users: BTreeMap<String, String>,
}

/// `basic_auth_users`, refusing a name given twice (the YAML library would keep the last, and
/// the exporter-toolkit refuses it): which of two hashes is meant cannot be guessed.
fn users_once_each<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Users;
    impl<'de> serde::de::Visitor<'de> for Users {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of user names to bcrypt hashes")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut users = BTreeMap::new();
            while let Some((user, hash)) = map.next_entry::<String, String>()? {
                if users.contains_key(&user) {
                    return Err(serde::de::Error::custom(format!(
                        "basic_auth_users: user {user:?} is listed twice"
                    )));
                }
                users.insert(user, hash);
            }
            Ok(users)
        }
    }
    d.deserialize_map(Users)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
}

/// Which clients the HTTPS endpoint accepts (the exporter-toolkit's `client_auth_type`s that
/// verify what they get; the two that take any certificate unverified are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (the default): no certificate asked.
    None,
    /// `VerifyClientCertIfGiven`: none needed, but one shown must be signed by the CA.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: only clients with a certificate the CA signed.
    Require,
}

/// The HTTPS settings: certificate chain and key files (PEM), and client certificates.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA (PEM) client certificates must chain to, with how it is applied.
    pub client_ca: Option<(PathBuf, ClientAuth)>,
}

/// A bcrypt hash from the file. Not a password, but still kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct BcryptHash(String);

impl fmt::Debug for BcryptHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BcryptHash(***)")
    }
}

/// The web config file, checked: certificate and key load and match, every hash is bcrypt.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    pub file: PathBuf,
    pub tls: Option<ServerTls>,
    pub users: BTreeMap<String, BcryptHash>,
}

impl WebConfig {
    /// Reads and checks the file; problems are `file:line:column: what`.
    pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            file: path.display().to_string(),
            message: format!("cannot read web config: {e}"),
        })?;
        WebConfig::parse(path, &text)
    }

    /// Checks `text` as if read from `path` (relative file names resolve against its folder).
    pub fn parse(path: &Path, text: &str) -> Result<WebConfig, ConfigError> {
        let file = path.display().to_string();
        let at = |steps: &[Step], message: String| problem_at(path, text, steps, message);
        let parsed: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| yaml_error(file.clone(), &e))?
        };
        let base = path.parent().unwrap_or(Path::new(""));
        let tls = match parsed.tls_server_config {
            None => None,
            Some(t) => {
                let in_tls = |key: &str, message: String| {
                    at(
                        &[Step::Key("tls_server_config"), Step::Key(key)],
                        format!("tls_server_config: {message}"),
                    )
                };
                let auth = match t.client_auth_type.as_deref() {
                    None | Some("NoClientCert") => ClientAuth::None,
                    Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
                    Some("RequireAndVerifyClientCert") => ClientAuth::Require,
                    Some(other) => {
                        return Err(in_tls(
                            "client_auth_type",
                            format!(
                                "client_auth_type {other:?} is not supported: NoClientCert, \
                                 VerifyClientCertIfGiven or RequireAndVerifyClientCert \
                                 (the others accept a certificate without checking it)"
                            ),
                        ))
                    }
                };
                let client_ca = match (&t.client_ca_file, auth) {
                    (None, ClientAuth::None) => None,
                    (Some(_), ClientAuth::None) => {
                        return Err(in_tls(
                            "client_ca_file",
                            "client_ca_file without a client_auth_type that checks client \
                             certificates (VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
                                .into(),
                        ));
                    }
                    (None, _) => {
                        return Err(in_tls(
                            "client_auth_type",
                            "this client_auth_type checks client certificates against \
                             client_ca_file, which is missing"
                                .into(),
                        ))
                    }
                    (Some(ca), auth) => Some((base.join(ca), auth)),
                };
                let tls = ServerTls {
                    cert: base.join(&t.cert_file),
                    key: base.join(&t.key_file),
                    client_ca,
                };
                server_config(&tls).map_err(|e| in_tls("cert_file", e))?;
                Some(tls)
            }
        };
        let mut users = BTreeMap::new();
        for (user, hash) in parsed.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                return Err(at(
                    &[Step::Key("basic_auth_users"), Step::Key(&user)],
                    format!("basic_auth_users: user name {user:?} must be non-empty, without ':'"),
                ));
            }
            let problem = match hash.parse::<bcrypt::HashParts>().map(|p| p.get_cost()) {
                Err(_) => Some(format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash \
                     (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
                )),
                Ok(cost) if cost > MAX_COST => Some(format!(
                    "basic_auth_users: the hash of {user:?} has bcrypt cost {cost}: every \
                     check would take half a minute or more (htpasswd stops at {MAX_COST}; 10 to 12 is usual)"
                )),
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                return Err(at(
                    &[Step::Key("basic_auth_users"), Step::Key(&user)],
                    problem,
                ));
            }
            users.insert(user, BcryptHash(hash));
        }
        Ok(WebConfig {
            file: path.to_owned(),
            tls,
            users,
        })
    }
}

/// The server side of HTTPS: certificate chain, key and client verification as rustls wants
/// them.
fn server_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = crate::tls::read_chain(&tls.cert)?;
    let key = crate::tls::read_key(&tls.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some((ca, auth)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in crate::tls::read_chain(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = match auth {
                ClientAuth::VerifyIfGiven => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What identifies a version of a file without reading it.
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

/// The certificate in use, reloaded when the files change (checked as each connection opens,
/// a `stat` of two files). A pair that does not load (a key written after its certificate, say)
/// keeps the previous certificate in service until the files change again.
struct CertReloader {
    tls: ServerTls,
    /// The files' stamps when last loaded (or tried), the config served, and when a load of
    /// those stamps failed.
    current: Mutex<CertState>,
}

struct CertState {
    stamps: [Stamp; 3],
    config: Arc<rustls::ServerConfig>,
    failed_at: Option<std::time::Instant>,
}

/// How long a certificate that changed but did not load is served from the previous one
/// before the files are read again, though unchanged: the failure may have been the moment's
/// (out of file descriptors during a burst of connections), not the files'.
const CERT_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

impl CertReloader {
    fn new(tls: ServerTls) -> Result<CertReloader, String> {
        let stamps = Self::stamps(&tls);
        let config = server_config(&tls)?;
        Ok(CertReloader {
            tls,
            current: Mutex::new(CertState {
                stamps,
                config,
                failed_at: None,
            }),
        })
    }

    /// The certificate's, the key's and the client CA's.
    fn stamps(tls: &ServerTls) -> [Stamp; 3] {
        let ca = tls.client_ca.as_ref().and_then(|(ca, _)| stamp(ca));
        [stamp(&tls.cert), stamp(&tls.key), ca]
    }

    fn acceptor(&self) -> TlsAcceptor {
        let stamps = Self::stamps(&self.tls);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let changed = stamps != current.stamps;
        let retry = current
            .failed_at
            .is_some_and(|at| at.elapsed() >= CERT_RETRY);
        if changed || retry {
            current.stamps = stamps;
            match server_config(&self.tls) {
                Ok(config) => {
                    current.config = config;
                    current.failed_at = None;
                    tracing::info!(cert_file = %self.tls.cert.display(), "HTTPS certificate reloaded");
                }
                Err(problem) => {
                    current.failed_at = Some(std::time::Instant::now());
                    if changed {
                        tracing::warn!(
                            cert_file = %self.tls.cert.display(), %problem,
                            "HTTPS certificate changed but does not load; still serving the previous one (tried again every 10 s)"
                        );
                    }
                }
            }
        }
        TlsAcceptor::from(current.config.clone())
    }
}

/// Checks `Authorization: Basic` against the configured users.
struct BasicAuth {
    users: BTreeMap<String, BcryptHash>,
    /// Checked for unknown users, at the highest cost among the real hashes; made at the first
    /// unknown user, off the start (at a high cost it takes seconds, and the port is open).
    dummy: std::sync::OnceLock<String>,
    dummy_cost: u32,
    /// A random key per process: the remembered digests are useless outside it.
    salt: [u8; 32],
    /// Digests of credentials that passed bcrypt.
    verified: Mutex<Vec<[u8; 32]>>,
    /// One bcrypt check at a time: a flood of wrong passwords then costs one core at most,
    /// and polls and scrapes (which run on the same blocking pool and workers) go on.
    bcrypt_slot: tokio::sync::Semaphore,
    /// Checks queued or running per client address; past [`PER_PEER`] for its address, or
    /// [`MAX_WAITING`] in all, a request is refused without one.
    per_peer: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// The distinct bcrypt costs of the users' hashes.
fn costs(users: &BTreeMap<String, BcryptHash>) -> std::collections::BTreeSet<u32> {
    users
        .values()
        .filter_map(|h| h.0.parse::<bcrypt::HashParts>().ok())
        .map(|p| p.get_cost())
        .collect()
}

/// Checks one client address may have queued or running. A flood of wrong passwords from one
/// address then holds a handful of places in the queue, not all of them: Prometheus, from its
/// own address, still gets its right password checked (and remembered) instead of a 401
/// for as long as the flood lasts.
const PER_PEER: usize = 4;

/// Checks queued at most. A check runs to its end even when its client has gone (Prometheus
/// gives up at its scrape timeout, and a flood of wrong passwords can queue a first, right
/// login for longer than that): a right password is then remembered, and the next scrape
/// passes at once. The bound keeps a flood from queueing work and memory without end.
const MAX_WAITING: usize = 256;

/// The highest bcrypt cost accepted (`htpasswd -C`'s own limit). Each step doubles the time
/// of a check; a reviewer measured 8.3 s at cost 16 on this 2-vCPU machine.
const MAX_COST: u32 = 17;

/// At most this many remembered credentials (successes only, so in practice one per user).
const REMEMBERED: usize = 64;

impl BasicAuth {
    fn new(users: BTreeMap<String, BcryptHash>) -> Result<BasicAuth, String> {
        let costs = costs(&users);
        let cost = costs.iter().copied().max().unwrap_or(bcrypt::DEFAULT_COST);
        if costs.len() > 1 {
            tracing::warn!(
                costs = ?costs,
                "basic_auth_users' bcrypt hashes have different costs: a user's check takes as long as its cost, so answer times tell which user a request named; hash every password at one cost"
            );
        }
        Ok(BasicAuth {
            users,
            dummy: std::sync::OnceLock::new(),
            dummy_cost: cost,
            salt: rand::random(),
            verified: Mutex::new(Vec::new()),
            bcrypt_slot: tokio::sync::Semaphore::new(1),
            per_peer: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Checks queued or running, all addresses together.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    fn digest(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    async fn check(self: Arc<Self>, header: Option<&HeaderValue>, peer: std::net::IpAddr) -> bool {
        let Some((user, password)) = header.and_then(parse_basic) else {
            return false;
        };
        let digest = self.digest(&user, &password);
        let remembered = {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            verified
                .iter()
                .fold(subtle::Choice::from(0), |seen, d| seen | d.ct_eq(&digest))
        };
        if bool::from(remembered) {
            return true;
        }
        {
            let mut per_peer = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
            let waiting: usize = per_peer.values().sum();
            let mine = per_peer.entry(peer).or_insert(0);
            if *mine >= PER_PEER || waiting >= MAX_WAITING {
                if *mine == 0 {
                    per_peer.remove(&peer);
                }
                return false;
            }
            *mine += 1;
        }
        let auth = self.clone();
        let check = tokio::spawn(async move {
            let ok = auth.clone().verify(user, password, digest).await;
            let mut per_peer = auth.per_peer.lock().unwrap_or_else(|p| p.into_inner());
            if let std::collections::hash_map::Entry::Occupied(mut e) = per_peer.entry(peer) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
            ok
        });
        check.await.unwrap_or(false)
    }

    /// The bcrypt check of a credential not remembered; remembers it when right.
    async fn verify(self: Arc<Self>, user: String, password: String, digest: [u8; 32]) -> bool {
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (Some(h.0.clone()), true),
            None => (None, false),
        };
        // bcrypt is slow on purpose: off the async workers, one check at a time.
        let Ok(_slot) = self.bcrypt_slot.acquire().await else {
            return false;
        };
        let auth = self.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let hash = hash.unwrap_or_else(|| {
                auth.dummy
                    .get_or_init(|| {
                        bcrypt::hash(rand::random::<[u8; 16]>(), auth.dummy_cost)
                            .unwrap_or_default()
                    })
                    .clone()
            });
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let ok = matched && known;
        if ok {
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified.len() >= REMEMBERED {
                verified.clear();
            }
            verified.push(digest);
        }
        ok
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(header: &HeaderValue) -> Option<(String, String)> {
    use base64::Engine as _;
    let text = header.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 4096 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The running form of a [`WebConfig`]: what the HTTP server asks per connection and request.
pub struct WebSecurity {
    tls: Option<CertReloader>,
    auth: Option<Arc<BasicAuth>>,
}

/// The value of `WWW-Authenticate` on a 401.
pub const CHALLENGE: &str = "Basic realm=\"redis-lookout\", charset=\"UTF-8\"";

impl WebSecurity {
    pub fn new(config: &WebConfig) -> Result<WebSecurity, String> {
        let tls = match &config.tls {
            Some(tls) => Some(CertReloader::new(tls.clone())?),
            None => None,
        };
        let auth = if config.users.is_empty() {
            None
        } else {
            Some(Arc::new(BasicAuth::new(config.users.clone())?))
        };
        Ok(WebSecurity { tls, auth })
    }

    /// The TLS acceptor for a new connection (the current certificate), when HTTPS is on.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.tls.as_ref().map(CertReloader::acceptor)
    }

    /// Whether a request to `path` with this `Authorization` header, from `peer`, may proceed.
    pub async fn allows(
        &self,
        path: &str,
        authorization: Option<&HeaderValue>,
        peer: std::net::IpAddr,
    ) -> bool {
        match &self.auth {
            None => true,
            Some(_) if path == "/-/healthy" => true,
            Some(auth) => auth.clone().check(authorization, peer).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn users_hashed_at_different_costs_are_told_apart() {
        let (a, b) = (bcrypt::hash("x", 4).unwrap(), bcrypt::hash("y", 5).unwrap());
        let config = parse(&format!("basic_auth_users:\n  a: '{a}'\n  b: '{b}'\n")).unwrap();
        assert_eq!(costs(&config.users).into_iter().collect::<Vec<_>>(), [4, 5]);
        let config = parse(&format!("basic_auth_users:\n  a: '{a}'\n")).unwrap();
        assert_eq!(costs(&config.users).len(), 1);
    }

    /// Hundreds of wrong passwords at once from one address hold at most PER_PEER places in
    /// the bcrypt queue: the right password from another address is checked and passes while
    /// the flood goes on (it was refused once the flood filled the queue's 256 places).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_from_one_address_does_not_lock_out_another() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let config = parse(&format!("basic_auth_users:\n  prom: '{hash}'\n")).unwrap();
        let web = Arc::new(WebSecurity::new(&config).unwrap());
        let header = |user: &str, pw: &str| {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            HeaderValue::from_str(&format!("Basic {raw}")).unwrap()
        };
        let auth = web.auth.clone().unwrap();
        // No check finishes until the flood has taken every place it can.
        let busy = auth.bcrypt_slot.acquire().await.unwrap();
        let flooder: std::net::IpAddr = "10.0.0.66".parse().unwrap();
        let flood: Vec<_> = (0..300)
            .map(|i| {
                let (web, wrong) = (web.clone(), header("prom", &format!("guess{i}")));
                tokio::spawn(async move { web.allows("/metrics", Some(&wrong), flooder).await })
            })
            .collect();
        let waiting = || auth.waiting();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while flood.iter().filter(|f| f.is_finished()).count() + waiting() < 300 {
            assert!(
                std::time::Instant::now() < deadline,
                "the flood never settled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(waiting(), PER_PEER, "the flood holds PER_PEER places");
        let prometheus: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let right = {
            let (web, right) = (web.clone(), header("prom", "s3cret"));
            tokio::spawn(async move { web.allows("/metrics", Some(&right), prometheus).await })
        };
        while waiting() == PER_PEER && !right.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the right password never queued"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(busy);
        assert!(right.await.unwrap(), "the right password was refused");
        for f in flood {
            assert!(!f.await.unwrap(), "a wrong password passed");
        }
        assert!(
            auth.per_peer.lock().unwrap().is_empty(),
            "no count left behind"
        );
        assert_eq!(auth.waiting(), 0);
    }

    fn parse(text: &str) -> Result<WebConfig, ConfigError> {
        WebConfig::parse(Path::new("/etc/web.yml"), text)
    }

    #[test]
    fn mistakes_name_the_file_line_and_column() {
        let err = parse("basic_auth_users:\n  alice: $2y$10$abc\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/web.yml:2:3: "), "{err}");
        assert!(err.contains("not a bcrypt hash"), "{err}");
        let err =
            parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n")
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("/etc/web.yml:4:"), "{err}");
        assert!(err.contains("min_version"), "{err}");
        // Client certificates: a type that checks nothing, a CA nothing checks against, a
        // check without a CA; each pointed at its line.
        for (extra, line, what) in [
            (
                "  client_auth_type: RequireAnyClientCert\n",
                4,
                "not supported",
            ),
            (
                "  client_ca_file: ca.crt\n",
                4,
                "without a client_auth_type",
            ),
            (
                "  client_auth_type: VerifyClientCertIfGiven\n",
                4,
                "client_ca_file",
            ),
        ] {
            let err = parse(&format!(
                "tls_server_config:\n  cert_file: a\n  key_file: b\n{extra}"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.starts_with(&format!("/etc/web.yml:{line}:")), "{err}");
            assert!(err.contains(what), "{err}");
        }
        let err = parse("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/web.yml:2:3: "), "{err}");
        assert!(err.contains("/etc/missing.crt"), "{err}");
        // A user twice: which hash is meant cannot be guessed.
        let hash = "$2y$04$RK6Y7V3eFsPbfCq0.Ij3/.ElFxJXmgS6xbYH6r1pzZB0M7.5XCbwS";
        let err = parse(&format!(
            "basic_auth_users:\n  prom: '{hash}'\n  prom: '{hash}'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/etc/web.yml:"), "{err}");
        assert!(err.contains("listed twice"), "{err}");
        // A hash where the users' map belongs: the error does not repeat it.
        let err = parse(&format!("basic_auth_users: '{hash}'\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/web.yml:1:"), "{err}");
        assert!(!err.contains("RK6Y7V3eF"), "{err}");
        // A cost no scrape could wait for.
        let slow = hash.replace("$04$", "$18$");
        let err = parse(&format!("basic_auth_users:\n  prom: '{slow}'\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/web.yml:2:3: "), "{err}");
        assert!(err.contains("cost 18"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_right_password_is_remembered_even_when_its_client_gave_up_waiting() {
        use std::time::Duration;
        let hash = bcrypt::hash("s3cret", 6).unwrap();
        let config = parse(&format!("basic_auth_users:\n  prom: '{hash}'\n")).unwrap();
        let web = WebSecurity::new(&config).unwrap();
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.encode("prom:s3cret");
        let header = HeaderValue::from_str(&format!("Basic {raw}")).unwrap();
        // The client leaves long before bcrypt is done (a scrape timeout in a queue).
        let gave_up = tokio::time::timeout(
            Duration::from_micros(1),
            web.allows("/metrics", Some(&header), PEER),
        )
        .await;
        assert!(
            gave_up.is_err(),
            "bcrypt at cost 6 takes longer than a microsecond"
        );
        let auth = web.auth.clone().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while auth.verified.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the right password was not remembered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(auth.waiting(), 0);
    }

    #[tokio::test]
    async fn basic_auth_accepts_the_right_password_only_and_healthy_stays_open() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let config = parse(&format!("basic_auth_users:\n  prom: '{hash}'\n")).unwrap();
        assert!(!format!("{config:?}").contains(&hash));
        let web = WebSecurity::new(&config).unwrap();
        let header = |user: &str, pw: &str| {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            HeaderValue::from_str(&format!("Basic {raw}")).unwrap()
        };
        assert!(
            web.allows("/metrics", Some(&header("prom", "s3cret")), PEER)
                .await
        );
        // Remembered now; still right, and a wrong one is still wrong.
        assert!(
            web.allows("/metrics", Some(&header("prom", "s3cret")), PEER)
                .await
        );
        assert!(
            !web.allows("/metrics", Some(&header("prom", "s3cret!")), PEER)
                .await
        );
        assert!(
            !web.allows("/metrics", Some(&header("nobody", "s3cret")), PEER)
                .await
        );
        assert!(!web.allows("/metrics", None, PEER).await);
        assert!(
            !web.allows(
                "/metrics",
                Some(&HeaderValue::from_static("Bearer x")),
                PEER
            )
            .await
        );
        assert!(web.allows("/-/healthy", None, PEER).await);
    }
}
