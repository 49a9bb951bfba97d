//! Operations security: bearer tokens with roles, TLS and mutual TLS on the
//! gRPC listener, and the refusal to expose an unprotected gateway.

mod common;

use std::{path::Path, time::Duration};

use common::{launch, start_must_fail};
use notigate::{
    auth::{Role, create_token},
    pb::{self, connection_admin_client::ConnectionAdminClient, notifier_client::NotifierClient},
};
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn with_token(
    token: Option<String>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        if let Some(t) = &token {
            let v: MetadataValue<_> = format!("Bearer {t}").parse().expect("header value");
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

/// Calls one RPC of each service and returns their codes (OK = passed
/// authentication: NOT_FOUND for the unknown names counts as OK).
async fn codes(channel: &Channel, token: Option<String>) -> (Code, Code) {
    let mut admin =
        ConnectionAdminClient::with_interceptor(channel.clone(), with_token(token.clone()));
    let mut notifier = NotifierClient::with_interceptor(channel.clone(), with_token(token));
    let a = match admin
        .list_connections(pb::ListConnectionsRequest::default())
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    let n = match notifier
        .list_notifications(pb::ListNotificationsRequest::default())
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    (a, n)
}

fn serve_args<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data];
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn tokens_grant_exactly_their_roles_and_health_stays_open() {
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    let admin = create_token(&tokens, &[Role::Admin], "admin tool").expect("token");
    let sender = create_token(&tokens, &[Role::Sender], "billing").expect("token");
    let both = create_token(&tokens, &[Role::Admin, Role::Sender], "ops").expect("token");
    let text = std::fs::read_to_string(&tokens).expect("tokens file");
    for t in [&admin, &sender, &both] {
        assert!(!text.contains(t.as_str()), "a token is stored in clear");
    }
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (_server, addr) = launch(
        &serve_args(data, &["--tokens-file", tokens.to_str().unwrap()]),
        &[],
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");

    assert_eq!(
        codes(&channel, None).await,
        (Code::Unauthenticated, Code::Unauthenticated)
    );
    assert_eq!(
        codes(&channel, Some("ngt_not-a-token".into())).await,
        (Code::Unauthenticated, Code::Unauthenticated)
    );
    assert_eq!(
        codes(&channel, Some(admin)).await,
        (Code::Ok, Code::PermissionDenied)
    );
    assert_eq!(
        codes(&channel, Some(sender)).await,
        (Code::PermissionDenied, Code::Ok)
    );
    assert_eq!(codes(&channel, Some(both)).await, (Code::Ok, Code::Ok));

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no token");
    assert_eq!(health.into_inner().status, 1);

    // A token created while the server runs works without a restart.
    let late = create_token(&tokens, &[Role::Sender], "late").expect("token");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(codes(&channel, Some(late)).await.1, Code::Ok);
}

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "notigate test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        let client_key = KeyPair::generate().expect("key");
        let mut client_params =
            CertificateParams::new(vec!["client.example".to_owned()]).expect("params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "admin tool");
        let client = client_params
            .signed_by(&client_key, &issuer)
            .expect("client cert");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca_pem: ca.pem(),
            client_cert: client.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    with_identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if with_identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_certificate_and_refuses_plain_text() {
    let pki = Pki::new();
    let data = pki.path("data");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let (_server, addr) = launch(
        &serve_args(&data, &["--tls-cert", &cert, "--tls-key", &key]),
        &[],
    );
    let channel = tls_channel(addr, &pki, false).await.expect("TLS connect");
    assert_eq!(codes(&channel, None).await, (Code::Ok, Code::Ok));
    let plain = async {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(codes(&ch, None).await)
    };
    if let Ok(Ok((a, _))) = tokio::time::timeout(Duration::from_secs(10), plain).await {
        assert_ne!(a, Code::Ok, "a plain-text call was served")
    }
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = Pki::new();
    let data = pki.path("data");
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let (_server, addr) = launch(
        &serve_args(
            &data,
            &["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca],
        ),
        &[],
    );
    let channel = tls_channel(addr, &pki, true).await.expect("mTLS connect");
    assert_eq!(codes(&channel, None).await, (Code::Ok, Code::Ok));
    let anonymous = async {
        let ch = tls_channel(addr, &pki, false).await?;
        Ok::<_, Box<dyn std::error::Error>>(codes(&ch, None).await)
    };
    if let Ok(Ok((a, n))) = tokio::time::timeout(Duration::from_secs(10), anonymous).await {
        assert!(
            a != Code::Ok && n != Code::Ok,
            "served without a client certificate"
        )
    }
    // The CLI client with and without its certificate.
    let cli = |with_cert: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_notigate"));
        cmd.args([
            "connection",
            "list",
            "--server",
            &format!("https://localhost:{}", addr.port()),
        ])
        .args(["--ca-cert", &ca]);
        if with_cert {
            cmd.args([
                "--client-cert",
                &pki.path("client.pem"),
                "--client-key",
                &pki.path("client.key"),
            ]);
        }
        cmd.output().expect("notigate runs")
    };
    let out = cli(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cli(false).status.success());
}

#[tokio::test]
async fn a_network_address_needs_tokens_and_tls_or_an_explicit_insecure() {
    let pki = Pki::new();
    let data = pki.path("data");
    let failure = start_must_fail(
        &["serve", "--listen", "0.0.0.0:0", "--data-dir", &data],
        &[],
    )
    .await;
    let line = failure.error_lines().join("\n");
    assert!(line.contains("tokens and TLS"), "{line}");

    let tokens = pki.path("tokens");
    create_token(Path::new(&tokens), &[Role::Admin], "t").expect("token");
    let failure = start_must_fail(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            &data,
            "--tokens-file",
            &tokens,
        ],
        &[],
    )
    .await;
    assert!(
        failure.error_lines().join("\n").contains("missing: TLS"),
        "{failure:?}"
    );

    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let (_server, _addr) = launch(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            &data,
            "--tokens-file",
            &tokens,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
}
