//! InfluxDB as a target: where points go (the write URL of the configured API and its
//! authorisation, with secrets read from their files), whether the server answers
//! (`check-config --probe`, start-up), and what a refusal most likely means, in terms of the
//! keys to fix. Used by the sink that writes and by the history reader that queries.

use crate::config::InfluxConfig;
use std::time::Duration;

/// A target that cannot be built from the configuration (bad URL, unreadable secret or CA).
#[derive(Debug, Clone, thiserror::Error)]
#[error("influxdb: {0}")]
pub struct TargetError(pub String);

/// Where and how points are written: the write URL of the configured API, the
/// `Authorization` header, and an HTTP client trusting the configured CA.
pub struct Target {
    /// HTTP client.
    pub client: reqwest::Client,
    /// Write URL with its query.
    pub url: reqwest::Url,
    /// `influxdb.url` without credentials (they are in `auth`).
    pub base: reqwest::Url,
    /// `Authorization` header value.
    pub auth: Option<String>,
}

/// A secret from its file (trimmed) when one is named, else the value.
fn secret(value: &str, file: &str, key: &str) -> Result<String, TargetError> {
    if file.is_empty() {
        return Ok(value.to_string());
    }
    std::fs::read_to_string(file)
        .map(|s| s.trim().to_string())
        .map_err(|e| TargetError(format!("cannot read influxdb.{key} {file}: {e}")))
}

impl Target {
    /// For `cfg`.
    pub fn new(cfg: &InfluxConfig) -> Result<Self, TargetError> {
        use crate::config::InfluxApi;
        use base64::Engine as _;
        let token = secret(&cfg.token, &cfg.token_file, "token_file")?;
        let password = secret(&cfg.password, &cfg.password_file, "password_file")?;
        // `join` would drop the base's last path segment without a trailing slash (a proxy
        // prefix like https://host/influx): append instead.
        let shown = crate::config::redact_url(&cfg.url);
        let mut url = reqwest::Url::parse(&cfg.url)
            .map_err(|e| TargetError(format!("influxdb.url {shown:?}: {e}")))?;
        // Credentials in the URL become the Authorization header (unless username or token
        // are set), so that no request URL — which errors print — carries them.
        let in_url = (!url.username().is_empty()).then(|| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let user = decode(url.username());
            let pass = url.password().map(decode).unwrap_or_default();
            format!("{user}:{pass}")
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let base = url.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| TargetError(format!("influxdb.url {shown:?} cannot be a base")))?;
            path.pop_if_empty();
            match cfg.api {
                InfluxApi::V2 => path.extend(["api", "v2", "write"]),
                InfluxApi::V1 => path.push("write"),
            };
        }
        {
            let mut q = url.query_pairs_mut();
            match cfg.api {
                InfluxApi::V2 => {
                    q.append_pair("org", &cfg.org)
                        .append_pair("bucket", &cfg.bucket);
                }
                InfluxApi::V1 => {
                    q.append_pair("db", cfg.v1_database());
                    if !cfg.retention_policy.is_empty() {
                        q.append_pair("rp", &cfg.retention_policy);
                    }
                }
            }
            q.append_pair("precision", "ns");
        }
        let basic = |pair: String| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        let auth = if !cfg.username.is_empty() {
            Some(basic(format!("{}:{password}", cfg.username)))
        } else if !token.is_empty() {
            Some(format!("Token {token}"))
        } else {
            in_url.map(basic)
        };
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.request_timeout.get())
            .connect_timeout(cfg.connect_timeout.get())
            .pool_idle_timeout(Duration::from_secs(60));
        if !cfg.ca_file.is_empty() {
            let pem = std::fs::read(&cfg.ca_file).map_err(|e| {
                TargetError(format!("cannot read influxdb.ca_file {}: {e}", cfg.ca_file))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                TargetError(format!(
                    "influxdb.ca_file {} holds no usable PEM certificate: {e}",
                    cfg.ca_file
                ))
            })?;
            if certs.is_empty() {
                return Err(TargetError(format!(
                    "influxdb.ca_file {} holds no PEM certificate",
                    cfg.ca_file
                )));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder
            .build()
            .map_err(|e| TargetError(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            client,
            url,
            base,
            auth,
        })
    }
}

/// Checks that InfluxDB takes writes where and as configured, without writing anything: an
/// empty write request (servers check the path, credentials and database or bucket before
/// the body). `Ok` says what answered; `Err` says what is wrong and what to do.
pub async fn probe(cfg: &InfluxConfig) -> Result<String, ProbeError> {
    let target = Target::new(cfg)?;
    let mut req = target
        .client
        .post(target.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body("");
    if let Some(auth) = &target.auth {
        req = req.header(reqwest::header::AUTHORIZATION, auth);
    }
    let resp = req.send().await.map_err(|e| {
        // The request URL is said once, redacted, below.
        let e = e.without_url();
        let mut why = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            why = format!("{why}: {s}");
            src = s.source();
        }
        ProbeError::Unreachable {
            url: crate::config::redact_url(&cfg.url),
            why,
        }
    })?;
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-influxdb-version")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("InfluxDB {v}"))
        .unwrap_or_else(|| "a server that does not say its version".into());
    let body: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(500)
        .collect();
    let path = target.url.path().to_string();
    match status {
        200..=299 => Ok(format!("{version} takes writes at {path} ({status})")),
        // InfluxDB 2.x refuses an empty body only after checking token and bucket.
        400 => Ok(format!(
            "{version} answers {path} (400 to an empty write, after accepting the credentials and bucket)"
        )),
        _ => Err(ProbeError::Refused(refusal(cfg, status, &body))),
    }
}

/// Why InfluxDB will not take the writes as configured.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The target cannot be built from the configuration.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// No answer (the server may come up later: the sink keeps retrying).
    #[error("cannot reach InfluxDB at {url}: {why}")]
    Unreachable {
        /// The URL, credentials redacted.
        url: String,
        /// Why, with its causes.
        why: String,
    },
    /// It answers, and refuses the writes ([`refusal`]: why, and what to do).
    #[error("{0}")]
    Refused(String),
}

/// Why InfluxDB refuses every write, told apart from the status and the body, with what to
/// do about it.
pub fn refusal(cfg: &InfluxConfig, status: u16, body: &str) -> String {
    use crate::config::InfluxApi;
    let lower = body.to_ascii_lowercase();
    let api = match cfg.api {
        InfluxApi::V1 => "v1",
        InfluxApi::V2 => "v2",
    };
    match status {
        404 if lower.contains("database not found") => format!(
            "InfluxDB has no database {:?} (influxdb.database); create it (CREATE DATABASE \"{}\") or fix the name",
            cfg.v1_database(),
            cfg.v1_database()
        ),
        404 if lower.contains("bucket") => format!(
            "InfluxDB has no bucket {:?} in org {:?} (influxdb.bucket, influxdb.org): {}",
            cfg.bucket,
            cfg.org,
            body.trim()
        ),
        404 if lower.contains("organization") || lower.contains("org ") => format!(
            "InfluxDB does not know org {:?} (influxdb.org): {}",
            cfg.org,
            body.trim()
        ),
        404 => {
            let hint = match cfg.api {
                InfluxApi::V2 => "InfluxDB 1.x has no /api/v2/write: set influxdb.api = \"v1\"",
                InfluxApi::V1 => {
                    "the server has no /write there: InfluxDB 2.x/3.x without a v1 compatibility endpoint needs influxdb.api = \"v2\""
                }
            };
            format!(
                "{} answers 404 ({}) for the {api} write API: wrong API or URL path; {hint}, and check that influxdb.url is the server's base URL",
                crate::config::redact_url(&cfg.url),
                body.trim()
            )
        }
        401 => format!(
            "InfluxDB refused the credentials (401: {}): check influxdb.{}",
            body.trim(),
            if cfg.username.is_empty() {
                "token"
            } else {
                "username and influxdb.password"
            }
        ),
        403 => format!(
            "InfluxDB does not let these credentials write there (403: {}): give the token or user write permission",
            body.trim()
        ),
        _ => format!("InfluxDB answered {status}: {}", body.trim()),
    }
}

/// A scripted HTTP server for the tests of the InfluxDB clients.
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny HTTP server answering each request with the next scripted response (body `{}`)
    /// and recording the requests it got.
    pub async fn server(
        script: Vec<(u16, Vec<(&'static str, String)>)>,
    ) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
        let script = script
            .into_iter()
            .map(|(status, headers)| (status, headers, "{}".to_string()))
            .collect();
        server_with_bodies(script).await
    }

    /// A scripted response: status, headers, body.
    pub type Reply = (u16, Vec<(&'static str, String)>, String);

    /// [`server`] with a response body per scripted response.
    pub async fn server_with_bodies(
        script: Vec<Reply>,
    ) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
        serve_script(script, None).await
    }

    /// [`server`] over TLS, with the test certificate of tests/data/tls (signed by its CA).
    pub async fn tls_server(
        script: Vec<(u16, Vec<(&'static str, String)>)>,
    ) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls");
        let certs = CertificateDer::pem_file_iter(format!("{dir}/server.pem"))
            .expect("server.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.key")).expect("server.key");
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let script = script
            .into_iter()
            .map(|(status, headers)| (status, headers, "{}".to_string()))
            .collect();
        let (url, seen) = serve_script(
            script,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await;
        (url.replace("http://", "https://"), seen)
    }

    /// Answers one scripted response per connection, over TLS when `tls` is given.
    async fn serve_script(
        script: Vec<Reply>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut script = script.into_iter();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                match &tls {
                    None => answer(sock, &mut script, &log).await,
                    Some(acceptor) => {
                        // A client that refuses the certificate ends the handshake.
                        if let Ok(s) = acceptor.accept(sock).await {
                            answer(s, &mut script, &log).await;
                        }
                    }
                }
            }
        });
        (format!("http://{addr}"), seen)
    }

    async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut sock: S,
        script: &mut impl Iterator<Item = Reply>,
        log: &Mutex<Vec<(String, String)>>,
    ) {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 65536];
        // Read headers, then the body by Content-Length.
        let (head, body) = loop {
            let n = sock.read(&mut tmp).await.unwrap_or(0);
            if n == 0 {
                break (String::new(), String::new());
            }
            buf.extend_from_slice(&tmp[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let body = String::from_utf8_lossy(&buf[end + 4..]).to_string();
                break (head, body);
            }
        };
        log.lock().expect("lock").push((head, body));
        let (status, headers, body) = script.next().unwrap_or((204, vec![], String::new()));
        let mut resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&body);
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_become_the_authorization_header() {
        use base64::Engine as _;
        let cfg = InfluxConfig {
            url: "http://us%40er:p%3Ass@db.plant:8086/influx".into(),
            ..InfluxConfig::default()
        };
        let t = Target::new(&cfg).expect("target");
        let want = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
        assert_eq!(t.auth.as_deref(), Some(format!("Basic {want}").as_str()));
        for u in [&t.url, &t.base] {
            assert!(u.username().is_empty() && u.password().is_none(), "{u}");
        }
        assert_eq!(t.base.as_str(), "http://db.plant:8086/influx");
        // A token set explicitly wins over credentials in the URL.
        let t = Target::new(&InfluxConfig {
            token: "tok".into(),
            ..cfg
        })
        .expect("target");
        assert_eq!(t.auth.as_deref(), Some("Token tok"));
    }

    #[tokio::test]
    async fn a_404_is_told_apart_wrong_api_missing_database_or_bucket() {
        let v2 = InfluxConfig::default();
        let v1 = InfluxConfig {
            api: crate::config::InfluxApi::V1,
            ..InfluxConfig::default()
        };
        assert!(refusal(&v2, 404, "404 page not found").contains("influxdb.api = \"v1\""));
        assert!(
            refusal(
                &v1,
                404,
                r#"{"error":"database not found: \"sensorcast\""}"#
            )
            .contains("has no database \"sensorcast\"")
        );
        assert!(
            refusal(
                &v2,
                404,
                r#"{"code":"not found","message":"bucket \"b\" not found"}"#
            )
            .contains("has no bucket")
        );
        assert!(refusal(&v1, 401, "").contains("influxdb.token"));
        assert!(
            refusal(
                &InfluxConfig {
                    username: "u".into(),
                    ..v1
                },
                401,
                ""
            )
            .contains("influxdb.username")
        );
        assert!(refusal(&v2, 403, "").contains("403"));
    }
}
