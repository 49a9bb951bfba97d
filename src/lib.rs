//! notigate: a gRPC notification gateway. Internal services call
//! `notigate.v1.Notifier` to have e-mail delivered; admin tooling manages the
//! outgoing connections through `notigate.v1.ConnectionAdmin`.
//!
//! Data flows one way: [`api`] → [`domain`] → [`store`]. The API layer never
//! touches sled.

pub mod api;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod connlog;
pub mod dispatch;
pub mod domain;
pub mod metrics;
pub mod pb;
mod server;
pub mod store;

pub use server::serve;
