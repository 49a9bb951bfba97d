//! gRPC server reflection as grpcurl uses it, over both `grpc.reflection.v1`
//! and `v1alpha` (older grpcurl releases only speak v1alpha).

mod common;

use common::*;

/// What a reflection exchange answered, independent of the protocol version.
#[derive(Debug)]
enum Answer {
    Services(Vec<String>),
    Files(Vec<prost_types::FileDescriptorProto>),
    Error(i32, String),
}

/// One request/response exchange per call; the same code for both versions
/// (their generated types are distinct but shaped alike).
macro_rules! reflection_version {
    ($module:ident, $version:path) => {
        mod $module {
            use super::Answer;
            use prost::Message;
            use v::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            use $version as v;

            /// The answer, or the status the server ended the stream with.
            pub async fn ask(
                channel: tonic::transport::Channel,
                request: Request,
            ) -> Result<Answer, tonic::Status> {
                let request = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(match request {
                        Request::ListServices => MessageRequest::ListServices(String::new()),
                        Request::Symbol(s) => MessageRequest::FileContainingSymbol(s.into()),
                    }),
                };
                let mut client = ServerReflectionClient::new(channel);
                let mut responses = client
                    .server_reflection_info(tokio_stream::iter(vec![request]))
                    .await
                    .expect("opening the reflection stream")
                    .into_inner();
                let response = responses.message().await?.expect("one response");
                Ok(
                    match response.message_response.expect("a message response") {
                        MessageResponse::ListServicesResponse(l) => {
                            Answer::Services(l.service.into_iter().map(|s| s.name).collect())
                        }
                        MessageResponse::FileDescriptorResponse(f) => Answer::Files(
                            f.file_descriptor_proto
                                .iter()
                                .map(|b| {
                                    prost_types::FileDescriptorProto::decode(b.as_slice())
                                        .expect("a FileDescriptorProto")
                                })
                                .collect(),
                        ),
                        MessageResponse::ErrorResponse(e) => {
                            Answer::Error(e.error_code, e.error_message)
                        }
                        other => panic!("unexpected reflection answer {other:?}"),
                    },
                )
            }

            pub enum Request {
                ListServices,
                Symbol(&'static str),
            }
        }
    };
}

reflection_version!(v1, tonic_reflection::pb::v1);
reflection_version!(v1alpha, tonic_reflection::pb::v1alpha);

const EXPECTED_SERVICES: [&str; 3] = [
    "notigate.v1.ConnectionAdmin",
    "notigate.v1.Notifier",
    "grpc.health.v1.Health",
];

fn assert_lists_our_services(answer: Result<Answer, tonic::Status>) {
    let Ok(Answer::Services(services)) = answer else {
        panic!("expected a service list, got {answer:?}");
    };
    for expected in EXPECTED_SERVICES {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }
}

/// The file that defines `service` (the first file of the answer), with it.
fn assert_describes_service(answer: Result<Answer, tonic::Status>, file: &str, service: &str) {
    let Ok(Answer::Files(files)) = answer else {
        panic!("expected file descriptors, got {answer:?}");
    };
    let defining = files.iter().find(|f| f.name() == file).unwrap_or_else(|| {
        panic!(
            "{file} missing from {:?}",
            files.iter().map(|f| f.name()).collect::<Vec<_>>()
        )
    });
    let svc = defining
        .service
        .iter()
        .find(|s| s.name() == service)
        .unwrap_or_else(|| panic!("{service} not in {file}"));
    let methods: Vec<&str> = svc.method.iter().map(|m| m.name()).collect();
    assert!(methods.contains(&"CreateConnection"), "{methods:?}");
    assert!(methods.contains(&"TestConnection"), "{methods:?}");
}

#[tokio::test]
async fn reflection_v1_lists_the_notigate_and_health_services() {
    let app = TestApp::spawn().await;

    assert_lists_our_services(v1::ask(app.channel.clone(), v1::Request::ListServices).await);
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_notigate_and_health_services() {
    let app = TestApp::spawn().await;

    assert_lists_our_services(
        v1alpha::ask(app.channel.clone(), v1alpha::Request::ListServices).await,
    );
}

#[tokio::test]
async fn reflection_describes_connection_admin_over_both_versions() {
    let app = TestApp::spawn().await;
    let file = "notigate/v1/connection_admin.proto";

    let answer = v1::ask(
        app.channel.clone(),
        v1::Request::Symbol("notigate.v1.ConnectionAdmin"),
    )
    .await;
    assert_describes_service(answer, file, "ConnectionAdmin");
    let answer = v1alpha::ask(
        app.channel.clone(),
        v1alpha::Request::Symbol("notigate.v1.ConnectionAdmin"),
    )
    .await;
    assert_describes_service(answer, file, "ConnectionAdmin");
}

#[tokio::test]
async fn reflection_describes_the_error_details_grpcurl_needs() {
    let app = TestApp::spawn().await;

    let answer = v1::ask(
        app.channel.clone(),
        v1::Request::Symbol("google.rpc.BadRequest"),
    )
    .await;

    let Ok(Answer::Files(files)) = answer else {
        panic!("expected file descriptors, got {answer:?}");
    };
    assert!(
        files
            .iter()
            .any(|f| f.message_type.iter().any(|m| m.name() == "BadRequest")),
        "{:?}",
        files.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn reflection_of_an_unknown_symbol_is_not_found() {
    let app = TestApp::spawn().await;

    let answer = v1::ask(app.channel.clone(), v1::Request::Symbol("no.such.Service")).await;

    // tonic-reflection ends the stream with the status rather than sending an
    // ErrorResponse; grpcurl reports either the same way.
    let code = match answer {
        Err(status) => status.code() as i32,
        Ok(Answer::Error(code, message)) => {
            assert!(!message.is_empty(), "the error says what is missing");
            code
        }
        Ok(other) => panic!("expected NOT_FOUND, got {other:?}"),
    };
    assert_eq!(code, tonic::Code::NotFound as i32);
}
