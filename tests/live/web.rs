//! The exporter's own HTTP secured by a web config file (`--web.config.file`, the Prometheus
//! exporter-toolkit format): HTTPS with a certificate reloaded when its files change, basic auth
//! with bcrypt hashes (`/-/healthy` open), and a bad file refused before anything is served.

use crate::support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "Scrape-Pa55-plugh";

/// Puts `from` at `to` by rename, as deployment tools do, so no reader sees half a file.
fn replace_file(from: &str, to: &std::path::Path) {
    let staged = to.with_extension("new");
    std::fs::copy(from, &staged).expect("stage file");
    std::fs::rename(&staged, to).expect("rename into place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_basic_auth_serves_scrapes_and_picks_up_a_replaced_certificate() {
    let pki = Pki::generate();
    let redis = RedisServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    replace_file(pki.path("server.crt"), &cert);
    replace_file(pki.path("server.key"), &key);
    let hash = bcrypt::hash(PASSWORD, 6).unwrap();
    let web = dir.path().join("web.yml");
    // Relative file names resolve against the web config file's folder.
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    )
    .unwrap();
    let p = Running::start(&[
        "--redis.addr",
        &redis.url(),
        "--poll-interval",
        "300ms",
        "--web.config.file",
        web.to_str().unwrap(),
        "--log-level",
        "debug",
    ]);
    let (addr, ca) = (p.addr, pki.path("ca.crt"));

    // /-/healthy needs no credentials; /metrics with them shows the target up.
    let healthy = wait_for("HTTPS served", Duration::from_secs(20), || async move {
        https_request(addr, ca, "/-/healthy", None)
            .await
            .ok()
            .filter(|r| r.0 == 200)
    })
    .await;
    assert_eq!(healthy.3, cert_der(pki.path("server.crt")));
    let creds = Some(("prometheus", PASSWORD));
    wait_for(
        "redis_up 1 over HTTPS",
        Duration::from_secs(20),
        || async move {
            let (status, _, body, _) = https_request(addr, ca, "/metrics", creds).await.ok()?;
            assert_eq!(status, 200, "right credentials");
            (Exposition::parse(&body).value("redis_up", &[]) == Some(1.0)).then_some(())
        },
    )
    .await;

    // No, wrong or unknown credentials: 401 with a challenge, on every path but /-/healthy.
    for (path, auth) in [
        ("/metrics", None),
        ("/metrics", Some(("prometheus", "wrong"))),
        ("/metrics", Some(("nobody", PASSWORD))),
        ("/", None),
        ("/-/ready", Some(("prometheus", ""))),
    ] {
        let (status, challenge, body, _) = https_request(addr, ca, path, auth).await.unwrap();
        assert_eq!(status, 401, "{path} with {auth:?}");
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
        assert!(!body.contains("redis_up"), "{path}: {body}");
    }

    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /-/healthy HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut raw))
        .await
        .expect("the server closes a plain-HTTP connection");
    assert!(
        !String::from_utf8_lossy(&raw).starts_with("HTTP/"),
        "plain HTTP was answered"
    );

    // The certificate is replaced on disk: new connections get the new one, scrapes go on.
    replace_file(pki.path("server2.key"), &key);
    replace_file(pki.path("server2.crt"), &cert);
    let new_cert = cert_der(pki.path("server2.crt"));
    let expected = &new_cert;
    wait_for(
        "the new certificate served",
        Duration::from_secs(10),
        || async move {
            https_request(addr, ca, "/-/healthy", None)
                .await
                .ok()
                .filter(|r| &r.3 == expected)
        },
    )
    .await;
    let (status, _, _, served) = https_request(addr, ca, "/metrics", creds).await.unwrap();
    assert_eq!((status, &served), (200, &new_cert));

    let log = p.log_text();
    assert!(log.contains("HTTPS certificate reloaded"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the basic auth password leaked into the log"
    );
}

#[test]
fn a_bad_web_config_file_stops_the_start_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    for (text, at, what) in [
        (
            "basic_auth_users:\n  prometheus: plain-text-password\n",
            ":2:3: ",
            "not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_auth_type: RequireAndVerifyClientCert\n",
            ":4:",
            "client_auth_type",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            ":2:3: ",
            "missing.crt",
        ),
    ] {
        let web = dir.path().join("web.yml");
        std::fs::write(&web, text).unwrap();
        // Accepted by mistake, the daemon would serve: it is given 20 s to exit, then killed.
        let mut p = Running::start(&[
            "--web.config.file",
            web.to_str().unwrap(),
            "--redis.addr",
            "redis://127.0.0.1:1",
        ]);
        let code = p.wait_exit(Duration::from_secs(20)).and_then(|s| s.code());
        let stderr = p.log_text();
        assert_eq!(code, Some(2), "{stderr}");
        let expected = format!("{}{at}", web.display());
        assert!(stderr.contains(&expected), "want {expected}: {stderr}");
        assert!(stderr.contains(what), "{stderr}");
    }
}

/// Client certificates (`client_ca_file`, `client_auth_type`): with RequireAndVerifyClientCert
/// only a client whose certificate the CA signed gets an answer, and a CA replaced on disk
/// applies to new connections; with VerifyClientCertIfGiven a client without one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_checked_against_the_client_ca() {
    let pki = Pki::generate();
    let closed = free_port();
    let dir = tempfile::tempdir().unwrap();
    let client_ca = dir.path().join("clients.crt");
    replace_file(pki.path("ca.crt"), &client_ca);
    let start = |auth_type: &str| {
        let web = dir.path().join(format!("{auth_type}.yml"));
        std::fs::write(
            &web,
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: clients.crt\n  client_auth_type: {auth_type}\n",
                pki.path("server.crt"),
                pki.path("server.key")
            ),
        )
        .unwrap();
        Running::start(&[
            "--redis.addr",
            &format!("redis://127.0.0.1:{closed}"),
            "--web.config.file",
            web.to_str().unwrap(),
        ])
    };
    let ca = pki.path("ca.crt");
    let client = Some((pki.path("client.crt"), pki.path("client.key")));

    // Waits until /-/healthy answers 200 to a client with (or without) its certificate.
    let healthy_for = |addr, with_certificate: bool| {
        let shown = if with_certificate { client } else { None };
        wait_for("HTTPS served", WAIT_HTTPS, move || async move {
            https_request_as(addr, ca, "/-/healthy", None, shown)
                .await
                .ok()
                .filter(|r| r.0 == 200)
        })
    };

    let p = start("RequireAndVerifyClientCert");
    let addr = p.addr;
    let served = healthy_for(addr, true).await;
    assert_eq!(served.2.trim(), "OK");
    let without = https_request_as(addr, ca, "/-/healthy", None, None).await;
    assert!(
        !matches!(&without, Ok((200, ..))),
        "served without a client certificate: {without:?}"
    );
    // The client CA replaced by one that did not sign the client: refused from then on.
    replace_file(pki.path("other-ca.crt"), &client_ca);
    wait_for(
        "the replaced client CA in force",
        WAIT_HTTPS,
        || async move {
            let r = https_request_as(addr, ca, "/-/healthy", None, client).await;
            (!matches!(r, Ok((200, ..)))).then_some(())
        },
    )
    .await;
    drop(p);

    replace_file(pki.path("ca.crt"), &client_ca);
    let p = start("VerifyClientCertIfGiven");
    let addr = p.addr;
    healthy_for(addr, false).await;
    let with = https_request_as(addr, ca, "/-/healthy", None, client).await;
    assert!(matches!(with, Ok((200, ..))), "{with:?}");
}

const WAIT_HTTPS: Duration = Duration::from_secs(20);
