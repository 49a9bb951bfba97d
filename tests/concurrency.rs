//! Many admin clients at once: uniqueness, etags and the single default hold
//! under concurrent writes.

mod common;

use common::*;
use notigate::pb;
use tonic::Code;

/// Runs `n` copies of a request concurrently and counts the outcomes by code.
async fn concurrently<F, Fut, T>(n: usize, call: F) -> Vec<Result<T, tonic::Status>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(call(i));
    }
    let mut results = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        results.push(r.expect("a request task panicked"));
    }
    results
}

fn count(results: &[Result<impl Sized, tonic::Status>], code: Code) -> usize {
    results
        .iter()
        .filter(|r| match r {
            Ok(_) => code == Code::Ok,
            Err(s) => s.code() == code,
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_creates_of_one_name_make_exactly_one_connection() {
    let app = TestApp::spawn().await;

    let results = concurrently(50, |i| {
        let mut admin = app.admin();
        async move {
            let mut c = smtp_connection("Contended");
            c.description = format!("writer {i}");
            admin
                .create_connection(pb::CreateConnectionRequest {
                    connection: Some(c),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;

    assert_eq!(count(&results, Code::Ok), 1, "{results:?}");
    assert_eq!(count(&results, Code::AlreadyExists), 49, "{results:?}");
    let winner = results
        .into_iter()
        .find_map(Result::ok)
        .expect("one create succeeded");
    assert_eq!(app.get_ok("Contended").await, winner);
    assert_eq!(app.list_all().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_updates_with_the_same_etag_let_exactly_one_through() {
    let app = TestApp::spawn().await;
    let created = app.create_ok(smtp_connection("Contended")).await;

    let results = concurrently(20, |i| {
        let mut admin = app.admin();
        let etag = created.etag.clone();
        async move {
            let mut c = smtp_connection("Contended");
            c.description = format!("writer {i}");
            c.etag = etag;
            admin
                .update_connection(pb::UpdateConnectionRequest {
                    connection: Some(c),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["description".into()],
                    }),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;

    assert_eq!(count(&results, Code::Ok), 1, "{results:?}");
    assert_eq!(count(&results, Code::Aborted), 19, "{results:?}");
    let winner = results
        .into_iter()
        .find_map(Result::ok)
        .expect("one update succeeded");
    assert_eq!(app.get_ok("Contended").await, winner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_default_creates_leave_exactly_one_default() {
    let app = TestApp::spawn().await;

    let results = concurrently(20, |i| {
        let mut admin = app.admin();
        async move {
            let mut c = smtp_connection(&format!("Default_{i:02}"));
            c.is_default = true;
            admin
                .create_connection(pb::CreateConnectionRequest {
                    connection: Some(c),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;

    assert_eq!(count(&results, Code::Ok), 20, "{results:?}");
    let all = app.list_all().await;
    assert_eq!(all.len(), 20);
    let defaults: Vec<&str> = all
        .iter()
        .filter(|c| c.is_default)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(defaults.len(), 1, "{defaults:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_default_updates_leave_exactly_one_default() {
    let app = TestApp::spawn().await;
    for i in 0..10 {
        app.create_ok(smtp_connection(&format!("Conn_{i}"))).await;
    }

    let results = concurrently(10, |i| {
        let mut admin = app.admin();
        async move {
            let mut c = smtp_connection(&format!("Conn_{i}"));
            c.is_default = true;
            admin
                .update_connection(pb::UpdateConnectionRequest {
                    connection: Some(c),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["is_default".into()],
                    }),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;

    assert_eq!(count(&results, Code::Ok), 10, "{results:?}");
    let defaults: Vec<String> = app
        .list_all()
        .await
        .into_iter()
        .filter(|c| c.is_default)
        .map(|c| c.name)
        .collect();
    assert_eq!(defaults.len(), 1, "{defaults:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_creates_of_different_names_all_succeed() {
    let app = TestApp::spawn().await;

    let results = concurrently(50, |i| {
        let mut admin = app.admin();
        async move {
            admin
                .create_connection(pb::CreateConnectionRequest {
                    connection: Some(exchange_connection(&format!("Parallel_{i:02}"))),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;

    assert_eq!(count(&results, Code::Ok), 50, "{results:?}");
    let names: Vec<String> = app.list_all().await.into_iter().map(|c| c.name).collect();
    let expected: Vec<String> = (0..50).map(|i| format!("Parallel_{i:02}")).collect();
    assert_eq!(names, expected);
}
